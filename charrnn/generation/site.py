"""What `charrnn serve` shows besides the API: the page at / (package data, under a strict Content-Security-Policy)
and one line on stderr per request."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from importlib import resources

from starlette.responses import HTMLResponse

from charrnn.console import counted, info, printable
from charrnn.generation.job import Job


def page_answer() -> HTMLResponse:
    """The page, with a Content-Security-Policy that lets only its own inline script and style run, and fetches
    go only to this server."""
    page = resources.files("charrnn.generation").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
              "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(page, headers={"content-security-policy": policy, "x-content-type-options": "nosniff",
                                       "referrer-policy": "no-referrer", "cache-control": "no-cache"})


class RequestLog:
    """One line on stderr per request once it has been answered: method, path, status, characters, time (and for a
    completion: the model, the most rows stepped with it, and how it ended if not in full)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            job = scope.get("state", {}).get("job")
            info(line(scope["method"], scope["path"], status[0], job, time.perf_counter() - start))


def line(method: str, path: str, status: int, job: Job | None, seconds: float) -> str:
    took = f"{seconds * 1000:.{1 if seconds < 0.01 else 0}f} ms" if seconds < 1 else f"{seconds:.2f} s"
    if job is None:
        return f"{method} {printable(path)[:200]} {status} {took}"
    end = " client gone" if job.cancelled else f" {job.failed}" if job.failed else ""
    return (f"{method} {printable(path)[:200]} {status} {printable(job.spec.model)} {counted(job.generated, 'char')} "
            f"batch {job.batch} {took}{end}")
