"""`charrnn serve`: models loaded once and kept at hand behind an HTTP API that OpenAI's clients speak.

    serve(): models loaded (a Batcher each, batcher.py) ─> a socket bound ─> uvicorn runs the starlette app (api.py)
    a signal: no more requests; those in flight finish, or are cut with an error event after --grace seconds;
              exit 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)

The server's dependencies (starlette, uvicorn) are the optional `serve` extra; this module imports them only
once serve() is called and they are known to be there.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path

from charrnn.console import info, printable
from charrnn.errors import CharrnnError, Interrupted, UsageError
from charrnn.generation.completion import Limits

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def needs_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CharrnnError(f"charrnn serve needs {e.name or 'its server'}: pip install 'charrnn[serve]'") from None


def named(target: str | None) -> tuple[str | None, Path | None]:
    """(NAME, RUN_OR_FILE) of a NAME=RUN_OR_FILE argument (unless it is an existing path), else (None, the path)."""
    if target is None:
        return None, None
    if "=" in target and not Path(target).exists():
        name, path = target.split("=", 1)
        if not name or not name.isprintable() or len(name) > 100:
            raise UsageError(f"{printable(target)}: a model's name (before =) needs 1 to 100 printable characters")
        return name, Path(path)
    return None, Path(target)


def load(targets: list[str], device_name: str, precision: str, timeout: float) -> dict:
    """{name: Served} for each target: its run's name (the directory holding best/last.safetensors, else the file's
    stem) unless NAME= gives one; two of one name are refused."""
    from charrnn.generation.api import Served
    from charrnn.generation.batcher import Batcher
    from charrnn.model.files import BEST, LAST, load_chosen

    served, files = {}, {}
    for target in targets or [None]:
        name, path = named(target)
        file, model, vocab, meta, device, chosen = load_chosen(path, device_name, precision, None, "sample")
        name = name or (file.parent.resolve().name if file.name in (BEST, LAST) else file.stem)
        if name in served:
            raise UsageError(f"two models are named {printable(name)!r} ({printable(str(files[name]))} and "
                             f"{printable(str(file))}); name one of them with NAME=RUN_OR_FILE")
        cfg = model.cfg
        about = {"cell": cfg.cell, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
                 "vocab_size": len(vocab), "step": meta.get("progress", {}).get("step"), "precision": chosen}
        served[name] = Served(name, Batcher(model, vocab, device, chosen, timeout), int(file.stat().st_mtime), about)
        files[name] = file
    return served


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: one the system picks)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise CharrnnError(f"cannot listen on {printable(host)}:{port}: {e.strerror or e}; pick another --port (or "
                           "--host)") from None


def server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped as charrnn stops: the first SIGINT, SIGTERM or SIGHUP closes the hub (no new
        requests; those in flight have --grace seconds) and stops uvicorn once they are answered; a second SIGINT
        stops at once. The signal is kept for the exit status, not raised again as uvicorn would, and the handlers
        stay until the process ends: another signal while it winds up cannot kill it."""

        def __init__(self, config, closing):
            super().__init__(config)
            self.closing, self.signal = closing, 0

        def handle_exit(self, sig, frame) -> None:
            if not self.signal:
                self.signal = sig
                self.closing()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            for sig in SIGNALS:
                signal.signal(sig, self.handle_exit)
            yield

    return Server


def serve(*, targets: list[str], host: str, port: int, limits: Limits, grace: float, device_name: str,
          precision: str) -> None:
    """Serve the models until a signal; raises Interrupted (exit 128 + the signal) once stopped cleanly."""
    needs_extra()
    import uvicorn

    from charrnn.generation.api import Hub, make_app

    hub = Hub(load(targets, device_name, precision, limits.timeout), limits)
    sock = listen(host, port)
    config = uvicorn.Config(make_app(hub), log_level="warning", access_log=False, lifespan="on", ws="none",
                            timeout_graceful_shutdown=grace + 5)
    server = server_class()(config, lambda: hub.close(grace))
    where = sock.getsockname()
    shown = f"[{where[0]}]" if sock.family == socket.AF_INET6 else where[0]
    info(f"serving {', '.join(map(printable, hub.models))} at http://{shown}:{where[1]}/ (Ctrl-C stops)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for model in hub.models.values():
            if model.batcher.thread.is_alive():
                model.batcher.stop()
    if not server.signal:  # uvicorn gave up on its own (it said why)
        raise CharrnnError("the server stopped")
    raise Interrupted(128 + server.signal)
