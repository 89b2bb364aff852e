"""The standard streams: descriptors the shell closed, text to stdout as it is made, a quiet end on a closed pipe.

stdout carries only data (generated text, or a command's report); everything else goes to stderr (console.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from charrnn.errors import CharrnnError, UsageError


def fill_closed_streams() -> None:
    """A standard stream closed by the shell (<&-, >&-, 2>&-) gets /dev/null in its place, so no file charrnn
    opens can take its number. sys.stdin/stdout stay None, so a command that needs one says it is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: fd itself, or a lower closed one
            if null != fd:
                os.dup2(null, fd)


def stdout_open() -> None:
    """Commands that write data refuse a stdout the shell closed (>&-) before doing any work."""
    if sys.stdout is None:
        raise UsageError("stdout is closed; send the output to a file or a pipe (e.g. > out.txt)")


def stdin_is_terminal() -> bool:
    """Whether stdin is a terminal (nothing piped in, so reading '-' would wait for typing)."""
    return sys.stdin is not None and sys.stdin.isatty()


def write_stream(chunks: Iterable[str]) -> None:
    """Text to stdout as UTF-8, each chunk as soon as it is made (a flush costs far less than a model step).
    A closed pipe (| head) ends quietly: this returns and the command exits 0. Any other write error (a full
    disk) is a one-line error."""
    stdout_open()
    out = sys.stdout
    out.reconfigure(encoding="utf-8", errors="strict")
    for chunk in chunks:  # an error while making a chunk is the maker's, and goes up as it is
        try:
            out.write(chunk)
            out.flush()
        except OSError as e:
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # drop what is buffered: no error at exit
            if isinstance(e, BrokenPipeError):
                return
            raise CharrnnError(f"cannot write to stdout: {e.strerror}; free some space or send the output "
                               "elsewhere") from None
