"""One completion request on its way through a Batcher: its choices' characters, held back while they may begin a
stop string, and the events the worker hands to the event loop."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from charrnn.generation.completion import Completion

Event = tuple[int, str, str | None]  # (choice, text, finish reason or None); choice -1: (-1, message, error code)


class Job:
    """One request on its way through a Batcher. The worker appends to events; the event loop reads them after
    ready() (deque appends and pops are thread-safe)."""

    def __init__(self, spec: Completion, timeout: float):
        self.spec, self.deadline = spec, time.monotonic() + timeout
        self.events: deque[Event] = deque()
        self.ready: Callable[[], None] = lambda: None  # the event loop's wake-up for this request
        self.cancelled = False  # the client went away: its rows leave at the next step
        self.failed: str | None = None  # the error code it ended with (timeout, shutdown, error)
        self.generated = 0  # characters made, stop strings included
        self.batch = 0  # the most rows stepped together while this request was in the batch
        choices = spec.n * len(spec.prompts)
        self.count, self.held = [0] * choices, [""] * choices  # per choice: characters made; text held back
        self.longest = max(map(len, spec.stops), default=0)

    def take(self, choice: int, ch: str) -> bool:
        """A choice's next character: passed on, or held back while it may begin a stop string. False once the
        choice has ended (its stop string made, left out of the text; or max_tokens characters made)."""
        self.generated += 1
        self.count[choice] += 1
        if not self.spec.stops:
            self.events.append((choice, ch, None))
        else:
            held = self.held[choice] + ch
            hit = max((s for s in self.spec.stops if held.endswith(s)), key=len, default=None)
            if hit is not None:
                self.events.append((choice, held[: -len(hit)], "stop"))
                return False
            wait = holding(held, self.spec.stops, self.longest)
            self.held[choice] = held[len(held) - wait :]
            if wait < len(held):
                self.events.append((choice, held[: len(held) - wait], None))
        if self.count[choice] >= self.spec.max_tokens:
            self.events.append((choice, self.held[choice], "length"))
            return False
        return True

    def fail(self, code: str, message: str) -> None:
        if not self.failed and not self.cancelled:
            self.failed = code
            self.events.append((-1, message, code))


def holding(text: str, stops: tuple[str, ...], longest: int) -> int:
    """How many of text's last characters could begin one of the stop strings: they wait for the next."""
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0
