"""The command that keeps models at hand: `serve` (an HTTP API that OpenAI's clients speak, and a page)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from charrnn import config as settings
from charrnn.cli import Device, Threads, app, choice, reports_errors, threads_and_checks
from charrnn.errors import UsageError
from charrnn.generation.completion import Limits

D = Limits()  # the defaults, for --help


def at_least(low: float, help: str, kind: type = int):
    return Annotated[kind, typer.Option(help=help, min=low)]


@app.command()
@reports_errors
def serve(
    models: Annotated[list[str] | None, typer.Argument(
        metavar="RUN_OR_FILE", help="Models to serve, each a model file, run directory, folder of runs (its "
        "newest) or run name under ./checkpoints, as for sample; NAME=RUN_OR_FILE names it in the API (else the "
        "run's name). Default: the newest run under ./checkpoints.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 serves this machine only; 0.0.0.0 "
                                      "every network it is on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 = any free one (the line on "
                                      "stderr says which).")] = 8000,
    max_chars: at_least(1, "Characters one request may ask for: max_tokens times its choices.") = D.max_chars,
    max_prompt: at_least(1, "Characters of prompt one request may send.") = D.max_prompt,
    max_n: at_least(1, "Choices one request may ask for: n times its prompts.") = D.max_n,
    max_requests: at_least(1, "Requests in flight at once, over all models; more are answered 429.") = D.max_requests,
    timeout: at_least(0, "Seconds a request may run; then it ends with an error (408, or an error event when "
                      "streamed).", float) = D.timeout,
    max_body: at_least(1, "Bytes of request body; more are answered 413.") = D.max_body,
    grace: at_least(0, "Seconds requests in flight may go on after Ctrl-C or SIGTERM; then they are cut, each with "
                    "an error.", float) = 10.0,
    device: Device = "auto",
    precision: choice(settings.PRECISIONS, "auto (as sample chooses for one sample: on a CPU fp32, bf16 weights "
                      "for large models where bf16 is native), fp32 or bf16 (bf16 weights, whatever the batch).",
                      str) = "auto",
    threads: Threads = None,
) -> None:
    """Serve models over HTTP until Ctrl-C or SIGTERM: an OpenAI-compatible
    API (POST /v1/completions, GET /v1/models), a page to try them at /,
    and GET /health.

    Models load once, at the start. Requests that arrive together are
    sampled together, one batch per model. max_tokens and usage count
    characters; top_k is taken as an extra field. One line per request goes
    to stderr. Needs the serve extra: pip install 'charrnn[serve]'.

    Exit status: 130 after Ctrl-C, 143 after SIGTERM (129: SIGHUP), once
    the requests in flight have finished or been cut; 1: a model
    unreadable, the port taken, or the extra missing; 2: bad options.
    """
    for name, value in (("--timeout", timeout), ("--grace", grace)):
        if not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number of seconds, not {value}")
    if timeout <= 0:
        raise UsageError(f"--timeout must be more than 0 seconds (every request would end at once), not {timeout}")
    threads_and_checks(threads, precision=precision)
    from charrnn.generation.serve import serve as serving

    serving(targets=models or [], host=host, port=port, grace=grace, device_name=device, precision=precision,
            limits=Limits(max_chars=max_chars, max_prompt=max_prompt, max_n=max_n, max_requests=max_requests,
                          timeout=timeout, max_body=max_body))
