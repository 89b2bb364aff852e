"""The OpenAI text-completions protocol as charrnn speaks it: a request body checked into a Completion, the limits a
server enforces, and the JSON it answers with (whole, as server-sent-event chunks, or as an error).

Every refusal is an ApiError: a 4xx status and OpenAI's error shape, {"error": {"message", "type", "param",
"code"}}, its message naming the field. Tokens are characters: max_tokens counts characters, and so does usage.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from charrnn.config import MAX_SEED

# OpenAI's completion fields charrnn takes as they are meant, charrnn's own (top_k), and OpenAI's that it takes only
# at their do-nothing value (FIXED: the values that change nothing here).
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "echo",
          "stream_options", "user"}
FIXED = {"logprobs": (None, 0), "best_of": (None, 1), "suffix": (None, ""), "presence_penalty": (None, 0),
         "frequency_penalty": (None, 0), "logit_bias": (None, {})}
MAX_TOKENS = 16  # max_tokens when a request leaves it out: OpenAI's default
MAX_TEMPERATURE = 2.0  # OpenAI's range for temperature: 0 to 2
MAX_STOPS, MAX_STOP_CHARS = 4, 100  # stop: at most 4 strings (OpenAI's limit), each at most 100 characters
MAX_TOP_K = 1 << 31


class ApiError(Exception):
    """A refused request: status (4xx, or 503 while stopping), message naming the field (param)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_value",
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (the options of `charrnn serve`)."""

    max_chars: int = 10_000  # characters one request may ask to generate: max_tokens x choices
    max_prompt: int = 10_000  # characters of prompt per request, all prompts together
    max_n: int = 16  # choices per request: n x prompts
    max_requests: int = 64  # requests in flight at once, over every model; more get 429
    timeout: float = 300.0  # seconds a request may take, from its arrival to its last character
    max_body: int = 1 << 20  # bytes of request body


@dataclass(frozen=True)
class Completion:
    """A checked request: every choice continues one of prompts; prompt i's choices are numbered i*n .. i*n+n-1."""

    model: str
    prompts: tuple[str, ...]
    n: int = 1
    max_tokens: int = MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stops: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    echo: bool = False
    include_usage: bool = False


def refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode(body: bytes) -> dict:
    """The body as a JSON object, or an ApiError saying why not (NaN and Infinity are not JSON)."""
    try:
        data = json.loads(body, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({str(e)[:200] or 'nested too deeply'})",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {kind_of(data)}", code="invalid_json")
    return data


def kind_of(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), "a value")


def integer(data: dict, name: str, default: int, low: int, high: int, why: str = "") -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be an integer, not {kind_of(value)}", name, "invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low:,} to {high:,}{why}, not {value:,}"[:300], name)
    return value


def real(data: dict, name: str, default: float, ok, rule: str) -> float:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number, not {kind_of(value)}", name, "invalid_type")
    if not (math.isfinite(value) and ok(value)):
        raise ApiError(400, f"{name} must be {rule}, not {value}"[:300], name)
    return float(value)


def boolean(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, not {kind_of(value)}", name, "invalid_type")
    return value


def texts(data: dict, name: str, default: tuple[str, ...], most: int) -> tuple[str, ...]:
    """A string or an array of strings (at most `most`), as a tuple."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value or len(value) > most or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{name} must be a string or an array of 1 to {most} strings (charrnn reads text, not "
                       "token ids)", name, "invalid_type")
    return tuple(value)


def model_name(data: dict, models: list[str]) -> str:
    """The model asked for: one that is served (404 otherwise), or the only one when the request names none."""
    name = data.get("model")
    if name is None and len(models) == 1:
        return models[0]
    if not isinstance(name, str):
        raise ApiError(400, f"model must be the name of a served model ({', '.join(models)}), not {kind_of(name)}",
                       "model", "invalid_type")
    if name not in models:
        raise ApiError(404, f"model {name[:100]!r} is not served here; the models are: {', '.join(models)}", "model",
                       "model_not_found")
    return name


def known_fields(data: dict) -> None:
    for name, value in data.items():
        if name in FIXED and value not in FIXED[name]:
            raise ApiError(400, f"{name} is not supported by charrnn; leave it out", name, "unsupported_field")
        if name not in FIELDS and name not in FIXED:
            raise ApiError(400, f"unknown field {name[:100]!r}; charrnn takes: {', '.join(sorted(FIELDS))}", name[:100],
                           "unknown_field")


def parse(body: bytes, models: list[str], limits: Limits) -> Completion:
    """A request body checked against the protocol and the limits: a Completion, or an ApiError naming the field."""
    data = decode(body)
    known_fields(data)
    model = model_name(data, models)
    prompts = texts(data, "prompt", ("",), limits.max_n)
    if sum(map(len, prompts)) > limits.max_prompt:
        raise ApiError(400, f"prompt holds {sum(map(len, prompts)):,} characters; this server takes at most "
                       f"{limits.max_prompt:,} (its --max-prompt)", "prompt")
    n = integer(data, "n", 1, 1, limits.max_n // len(prompts),
                f" (this server's --max-n, {limits.max_n}, over {len(prompts)} prompts)" if len(prompts) > 1
                else " (this server's --max-n)")
    most = limits.max_chars // (n * len(prompts))
    why = f" (this server's --max-chars, {limits.max_chars:,}, over {n * len(prompts)} choices)" if most < \
        limits.max_chars else " (this server's --max-chars)"
    stops = texts(data, "stop", (), MAX_STOPS)
    if not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"stop strings must have 1 to {MAX_STOP_CHARS} characters", "stop")
    options = data.get("stream_options")
    if options is not None and (not data.get("stream") or not isinstance(options, dict) or set(options) -
                                {"include_usage"}):
        raise ApiError(400, 'stream_options must be {"include_usage": true or false}, with stream true',
                       "stream_options")
    return Completion(
        model=model, prompts=prompts, n=n, stops=stops,
        max_tokens=integer(data, "max_tokens", min(MAX_TOKENS, most), 0, most, why),
        temperature=real(data, "temperature", 1.0, lambda v: 0 <= v <= MAX_TEMPERATURE,
                         f"from 0 to {MAX_TEMPERATURE:g} (0 = always the likeliest character)"),
        top_p=real(data, "top_p", 1.0, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
        top_k=integer(data, "top_k", 0, 0, MAX_TOP_K, " (0 = off)"),
        seed=integer(data, "seed", None, 0, MAX_SEED),
        stream=boolean(data, "stream"), echo=boolean(data, "echo"),
        include_usage=boolean(options or {}, "include_usage"))


class Reply:
    """The JSON of one completion's answer: ids and times shared by the whole answer or by each of its chunks."""

    def __init__(self, spec: Completion):
        self.spec, self.id, self.created = spec, f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.before = "data: " + json.dumps(self.head(choices=[]))[:-3] + '[{"index": '  # a chunk's JSON up to index

    def head(self, **rest) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.spec.model,
                **rest}

    def usage(self, generated: int) -> dict:
        prompt = sum(map(len, self.spec.prompts))  # each prompt counted once, as OpenAI does, whatever n
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def whole(self, texts: list[str], finish: list[str], generated: int) -> dict:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(texts, finish, strict=True))]
        return self.head(choices=choices, usage=self.usage(generated))

    def chunk(self, index: int, text: str, finish: str | None = None) -> bytes:
        """event(self.head(choices=[{"index": index, "text": text, "logprobs": None, "finish_reason": finish}])), made
        from its text alone: one is sent per choice for every character the event loop keeps up with."""
        return (f'{self.before}{index}, "text": {json.dumps(text)}, "logprobs": null, "finish_reason": '
                f'{json.dumps(finish)}}}]}}\n\n').encode()

    def usage_chunk(self, generated: int) -> bytes:
        return event(self.head(choices=[], usage=self.usage(generated)))


def event(data: dict | str) -> bytes:
    """One server-sent event as OpenAI's clients read it: `data: JSON` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


DONE = event("[DONE]")
