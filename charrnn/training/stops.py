"""The signals that stop a run: SIGINT (Ctrl-C), SIGTERM, and SIGHUP (the terminal or ssh session closed). Before
training they end the command at once; during training they ask the trainer to stop at the next step boundary,
where it saves, and a second SIGINT aborts at once."""

from __future__ import annotations

import contextlib
import signal

from charrnn.errors import Interrupted
from charrnn.training.trainer import Trainer

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def abort_on_signals():
    """Before training starts, SIGINT/SIGTERM/SIGHUP end the command at once (temporary files are removed on the way
    out); nothing has been saved yet."""
    def handler(sig, frame):
        raise Interrupted(128 + sig, f"stopped by {signal.Signals(sig).name} before training began; nothing saved")

    previous = {s: signal.signal(s, handler) for s in STOPS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM/SIGHUP ask the trainer to stop at the next step boundary (it then saves);
    a second SIGINT aborts at once. Yields the list of signals received."""
    received: list[int] = []

    def handler(sig, frame):
        if received and sig == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(sig)
        trainer.request_stop(sig)

    previous = {s: signal.signal(s, handler) for s in STOPS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
