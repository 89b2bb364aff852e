"""The one stderr console, and the training report drawn from Trainer events."""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape


class Stderr(io.TextIOBase):
    """sys.stderr (looked up at each write, as tests swap it) that falls silent once its reader has gone
    (charrnn train ... 2>&1 | head): losing the progress lines must never stop a training run."""

    gone = False

    @staticmethod
    def target():
        """sys.stderr itself, not the proxy a live progress bar puts in its place (that leads back here)."""
        return getattr(sys.stderr, "rich_proxied_file", sys.stderr)

    def write(self, text: str) -> int:
        out = self.target()
        if not self.gone and out is not None:
            try:
                out.write(text)
                out.flush()
            except OSError:
                self.gone = True
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # nothing left to flush at exit
        return len(text)

    def isatty(self) -> bool:
        return not self.gone and self.target() is not None and self.target().isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.target(), "encoding", None) or "utf-8"


console = Console(file=Stderr(), highlight=False)  # quiet on ranks other than 0 of a distributed train
LN2 = math.log(2)


def error(message: str) -> None:
    """One line, whatever the message quotes (a flag's value with a line separator or a terminal escape in it)."""
    console.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(printable(message))}", soft_wrap=True)


def info(message: str) -> None:
    console.print(escape(message), soft_wrap=True)


def note(message: str) -> None:
    """An informational line that only a person at a terminal needs (sample's and score's 'using FILE'):
    in a script, stderr stays empty unless something is wrong."""
    if console.is_terminal:
        info(message)


def printable(text: str) -> str:
    """text with every non-printing character (controls, terminal escapes, line and paragraph separators) written
    as its Python escape, so a name read from a file cannot drive the terminal: '\\x1b[2J' stays text."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def counted(n: int, noun: str) -> str:
    """'1 step', '40 steps', '1,000 characters'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """'0.4 s', '9.5 s', '42 s': tenths while they matter."""
    return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"


def nats_bits(nats: float) -> str:
    return f"{nats:.4f} nats ({nats / LN2:.4f} bits/char)"


class TrainReport:
    """Progress bar on a terminal that can draw one, plain periodic lines otherwise (a pipe, a file, TERM=dumb:
    rich draws nothing there); a sample at every evaluation. The bar fits 80 columns: the step and the step budget
    (total_steps, inf with a time budget alone), the loss, the validation loss and the time left."""

    def __init__(self, fraction_done: Callable[[], float], sample: Callable[[], str], total_steps: float = math.inf):
        self.fraction_done, self.sample = fraction_done, sample
        self.val, self.bar = math.nan, None
        self.of = f"/{total_steps:,.0f}" if math.isfinite(total_steps) else ""
        if console.is_terminal and not console.is_dumb_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.fields[step]}"), BarColumn(bar_width=16),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), TextColumn("left"),
                                console=console, transient=True)
            self.task = self.bar.add_task("train", total=1.0, step=f"step 0{self.of}", status="")
            self.bar.start()

    def __call__(self, event) -> None:
        m = event.metrics
        if event.kind == "log":
            if self.bar:
                val = "-" if math.isnan(self.val) else f"{self.val:.3f}"
                self.bar.update(self.task, completed=min(1.0, self.fraction_done()),
                                step=f"step {m['step']:,}{self.of}", status=f"loss {m['train_loss']:.3f} val {val}")
            else:
                val = "-" if math.isnan(self.val) else f"{self.val:.3f} nats {self.val / LN2:.3f} bpc"
                info(f"step {m['step']} | epoch {m['epoch']:.2f} | lr {m['lr']:.2e} | loss {m['train_loss']:.3f} | "
                     f"val {val} | {m['chars_per_s']:,.0f} chars/s")
        elif event.kind == "eval":
            self.val = m["val_loss"]
            mark = " (best)" if m["improved"] else ""
            info(f"step {m['step']}: val {nats_bits(self.val)}{mark}")
            console.print(escape(self.sample()), style="dim", soft_wrap=True)
        elif event.kind == "end" and self.bar:
            self.bar.stop()
