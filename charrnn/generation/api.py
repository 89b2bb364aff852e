"""The HTTP side of `charrnn serve` (starlette): /v1/completions, /v1/models and /health, with the page and the
request log of site.py. Each request's sampling runs in its model's Batcher thread (batcher.py); here a request is
checked (completion.py), handed over, and answered as its characters come: whole, or as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from charrnn.console import printable
from charrnn.generation.batcher import Batcher
from charrnn.generation.completion import DONE, ApiError, Limits, Reply, event, parse
from charrnn.generation.job import Job
from charrnn.generation.site import RequestLog, page_answer

STATUS = {"timeout": 408, "shutdown": 503, "error": 500}  # a request that failed midway, answered whole
SLACK = 10.0  # seconds past a request's --timeout that writing its answer may take: a client that stops reading
# holds its slot no longer
PACE = 0.01  # seconds between two writes to one client: what the model made meanwhile goes in one write
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # proxies: pass each event on at once


class Json(JSONResponse):
    """JSON with every non-ASCII character escaped: text with a lone surrogate (a prompt may hold one) goes out too."""

    def render(self, content) -> bytes:
        return json.dumps(content).encode("ascii")


@dataclass
class Served:
    """A model being served: its name in the API, its batcher and what /v1/models says of it."""

    name: str
    batcher: Batcher
    created: int  # the checkpoint's time, seconds since the epoch
    about: dict  # cell, sizes, vocabulary size and training step, for /v1/models and the page


@dataclass
class Hub:
    """What every request shares: the models, the limits, and the counts /health reports."""

    models: dict[str, Served]
    limits: Limits
    active: int = 0  # requests in flight
    served: int = 0  # completion requests answered
    closing: bool = False
    started: float = field(default_factory=time.monotonic)

    def close(self, grace: float) -> None:
        """Take no more requests; those in flight have grace seconds to finish (called from a signal handler)."""
        self.closing = True
        for model in self.models.values():
            model.batcher.close(grace)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes limit bytes, whatever its Content-Length claims."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_big(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limit:,} bytes (its --max-body)",
                    code="body_too_large")


async def completions(request: Request):
    hub: Hub = request.app.state.hub
    if hub.closing:
        raise ApiError(503, "the server is shutting down; it takes no more requests", code="shutting_down",
                       kind="server_error")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":  # a form or text/plain POST from another site's page needs no CORS preflight
        raise ApiError(415, f"send the body as JSON with content-type: application/json, not {kind or 'none'}",
                       code="unsupported_media_type")
    spec = parse(await read_body(request, hub.limits.max_body), list(hub.models), hub.limits)
    if hub.active >= hub.limits.max_requests:  # counted from here on: no await between the test and the count
        raise ApiError(429, f"this server is answering {hub.active} requests, its limit (--max-requests); try again "
                       "shortly", code="too_many_requests", kind="rate_limit_error")
    hub.active += 1
    job = Job(spec, hub.limits.timeout)
    request.scope.setdefault("state", {})["job"] = job
    return Answer(hub, job)


class Answer:
    """The answer to one completion request (an ASGI app): hands its job to the model's batcher, writes what it
    makes as it comes (whole at the end, or as server-sent events), and cancels it if the client goes away."""

    def __init__(self, hub: Hub, job: Job):
        self.hub, self.job, self.spec = hub, job, job.spec
        self.reply, self.ready, self.gone, self.answered = Reply(job.spec), asyncio.Event(), False, False

    async def __call__(self, scope, receive, send) -> None:
        """Answers the request; hub.active, counted when it was let in, is given back at the end."""
        self.job.ready = self.ready.set
        watch = asyncio.create_task(self.watch(receive))
        try:
            self.hub.models[self.spec.model].batcher.submit(self.job)

            async def timed(message) -> None:  # a client that stops reading holds its slot no longer than this
                self.answered |= message["type"] == "http.response.body" and not message.get("more_body", False)
                await asyncio.wait_for(send(message), max(0.0, self.job.deadline + SLACK - time.monotonic()))

            await (self.stream(timed) if self.spec.stream else self.whole(timed))
        except (OSError, asyncio.TimeoutError):  # the client went away, or stopped reading
            self.gone = True
        finally:
            self.job.cancelled |= self.gone
            watch.cancel()
            self.hub.active -= 1
            self.hub.served += 1

    async def watch(self, receive) -> None:
        """Waits for the client to hang up: its rows then leave the batch, and the answer ends."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.answered:  # a client that hangs up once answered is not gone early
            self.gone = self.job.cancelled = True
        self.ready.set()

    async def events(self):
        """Lists of the job's events as they come, until every choice has finished, the job failed or the client
        went away."""
        left = len(self.job.count)
        while left and not self.gone:
            await self.ready.wait()
            self.ready.clear()
            got = [self.job.events.popleft() for _ in range(len(self.job.events))]
            left -= sum(1 for c, _, finish in got if finish is not None and c >= 0)
            if any(c < 0 for c, _, _ in got):
                left = 0
            if got:
                yield got
                if left and not self.gone:  # a write per character would cost more than the character
                    await asyncio.sleep(PACE)

    def prompt(self, choice: int) -> str:
        return self.spec.prompts[choice // self.spec.n] if self.spec.echo else ""

    async def whole(self, send) -> None:
        choices = len(self.job.count)
        texts, finish = [self.prompt(c) for c in range(choices)], [None] * choices
        async for got in self.events():
            for c, text, end in got:
                if c < 0:
                    return await reply(send, STATUS[end], failure(text, end).body())
                texts[c] += text
                finish[c] = end or finish[c]
        if not self.gone:
            await reply(send, 200, self.reply.whole(texts, finish, self.job.generated))

    async def stream(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers(
            {"content-type": "text/event-stream; charset=utf-8", **SSE_HEADERS})})
        echo = [self.reply.chunk(c, self.prompt(c)) for c in range(len(self.job.count)) if self.prompt(c)]
        await send_more(send, b"".join(echo))
        async for got in self.events():
            await send_more(send, self.chunks(got))
        end = b"" if self.job.failed or self.gone else DONE
        if self.spec.include_usage and not self.job.failed:
            end = self.reply.usage_chunk(self.job.generated) + end
        await send({"type": "http.response.body", "body": end, "more_body": False})

    def chunks(self, got: list) -> bytes:
        """The events as server-sent events: one per choice with all its new text; an error's event last."""
        joined: dict[int, list] = {}
        failed = b""
        for c, text, end in got:
            if c < 0:
                failed = event(failure(text, end).body())
                continue
            piece = joined.setdefault(c, ["", None])
            piece[0] += text
            piece[1] = end or piece[1]
        return b"".join(self.reply.chunk(c, text, end) for c, (text, end) in joined.items() if text or end) + failed


def failure(message: str, end: str) -> ApiError:
    """A request that failed midway (end: timeout, shutdown or error), for a whole answer or a stream's last event."""
    return ApiError(STATUS[end], message, code=end, kind="server_error")


async def send_more(send, body: bytes) -> None:
    if body:
        await send({"type": "http.response.body", "body": body, "more_body": True})


def headers(values: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in values.items()]


async def reply(send, status: int, body: dict) -> None:
    """A whole JSON answer. One that ran out of time asks OpenAI's clients not to send it again (they retry 408)."""
    response = Json(body, status_code=status, headers={"x-should-retry": "false"} if status == 408 else None)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def card(model: Served) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "charrnn",
            "charrnn": model.about}


async def models(request: Request):
    return Json({"object": "list", "data": [card(m) for m in request.app.state.hub.models.values()]})


async def one_model(request: Request):
    model = request.app.state.hub.models.get(request.path_params["name"])
    if model is None:
        raise ApiError(404, f"model {request.path_params['name'][:100]!r} is not served here", "model",
                       "model_not_found")
    return Json(card(model))


async def health(request: Request):
    hub: Hub = request.app.state.hub
    batchers = {name: m.batcher for name, m in hub.models.items()}
    return Json({
        "status": "stopping" if hub.closing else "ok", "uptime_s": round(time.monotonic() - hub.started, 3),
        "requests": {"active": hub.active, "served": hub.served},
        "models": {name: {"rows": b.rows, "steps": b.steps, "chars": b.chars, "most_rows": b.most}
                   for name, b in batchers.items()}})


async def api_error(request: Request, e: ApiError):
    return Json(e.body(), status_code=e.status)


async def http_error(request: Request, e: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
    message = f"no {request.method} {printable(request.url.path)[:200]} here; see GET / and GET /v1/models"
    return Json(ApiError(e.status_code, message, code=code).body(), status_code=e.status_code,
                        headers=e.headers)


def make_app(hub: Hub) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        for model in hub.models.values():  # the batchers post to this loop from now on
            model.batcher.post = loop.call_soon_threadsafe
            model.batcher.thread.start()
        yield

    page = page_answer()
    async def front(request: Request):
        return page

    routes = [Route("/", front), Route("/health", health), Route("/v1/models", models),
              Route("/v1/models/{name:path}", one_model), Route("/v1/completions", completions, methods=["POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(RequestLog)], lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error})
    app.state.hub = hub
    return app

