"""Signals for `charrnn cells --find`: one number per character of a text, which a unit's values are compared with.

Each signal is the value that holds once its character has been read, as a unit's value is (units.py): an
opening delimiter (a quote, a comment marker, a bracket) is already inside its span, a closing one is outside.
Lines end at "\\n"; a newline belongs to the line it ends. Every function takes the text and returns a float64
array of len(text) values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np

from charrnn.errors import UsageError

STRING = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""  # a quoted span closed on its line; \ escapes inside
QUOTED = re.compile(STRING)
COMMENTS = re.compile(rf"(?P<string>{STRING})|(?P<line>(?:#|//)[^\n]*)|(?P<block>/\*[\s\S]*?(?:(?P<close>\*/)|\Z))")


def codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points


def spans(n: int, bounds: list[tuple[int, int]]) -> np.ndarray:
    """(n,) float64: 1 on every [start, end) of bounds (which do not overlap), else 0."""
    edges = np.zeros(n + 1)
    for start, end in bounds:
        edges[start] += 1
        edges[end] -= 1
    return np.cumsum(edges[:-1])


def quote(text: str) -> np.ndarray:
    """1 inside a quoted span, from its opening quote up to its closing quote (the closing quote itself is 0),
    else 0. Spans are found left to right: a ' or " outside any span opens one if the same quote closes it later
    on the same line; inside a span a backslash escapes the character after it (\\" does not close). A quote
    that no later quote on its line closes is an ordinary character. Comments are not special (see comment);
    an apostrophe in prose is a quote like any other."""
    return spans(len(text), [(m.start(), m.end() - 1) for m in QUOTED.finditer(text)])


def comment(text: str) -> np.ndarray:
    """1 inside a comment, else 0. A line comment runs from # or // to the end of its line (its newline is 0);
    a block comment from /* up to the closing */, whose final / is 0 (unclosed: to the end of the text).
    The text is read left to right and quoted spans (as in quote) are skipped, so a # or // inside a string
    starts nothing; comment markers are recognised whatever the language (# in C's #include counts too)."""
    bounds = []
    for m in COMMENTS.finditer(text):
        if m["line"] is not None:
            bounds.append((m.start(), m.end()))
        elif m["block"] is not None:
            bounds.append((m.start(), m.end() - (m["close"] is not None)))
    return spans(len(text), bounds)


def line_position(text: str) -> np.ndarray:
    """Characters read since the last newline: a newline is 0, the character after it 1, the next 2; the text's
    first line counts as if a newline came before it."""
    index = np.arange(len(text))  # (N,)
    last = np.maximum.accumulate(np.where(codes(text) == ord("\n"), index, -1)) if len(text) else index  # (N,)
    return (index - last).astype(np.float64)


def indent(text: str) -> np.ndarray:
    """The width of the current line's leading whitespace read so far, each space and each tab counting 1: in
    the leading whitespace it counts up (1 after its first character), from the line's first other character
    to its newline it is the whole width; a line of whitespace alone counts up to its newline."""
    out = np.zeros(len(text))
    for m in re.finditer(r"([ \t]*)[^\n]*\n?", text):
        start, width = m.start(), len(m[1])
        out[start : start + width] = np.arange(1, width + 1)
        out[start + width : m.end()] = width
    return out


def brackets(text: str) -> np.ndarray:
    """Nesting depth of ( [ { after reading the character: an opening bracket counts itself, a closing one does
    not. Any closing bracket closes the innermost open one whatever its kind; one with nothing open is ignored
    (the depth never goes below 0). Brackets in strings and comments count like any other."""
    c = codes(text)
    step = np.isin(c, [ord(b) for b in "([{"]).astype(np.int64) - np.isin(c, [ord(b) for b in ")]}"])  # (N,)
    walk = np.cumsum(step)  # (N,) depth if closers never went below 0
    return (walk - np.minimum(np.minimum.accumulate(walk), 0) if len(text) else walk).astype(np.float64)


def regex(text: str, pattern: re.Pattern) -> np.ndarray:
    """1 on every character inside a match of the pattern (Python re syntax; matches found left to right by
    re.finditer over the whole text, so . stops at a newline unless the pattern says (?s)), else 0. An empty
    match marks nothing."""
    return spans(len(text), [m.span() for m in pattern.finditer(text)])


SIGNALS: dict[str, Callable[[str], np.ndarray]] = {"quote": quote, "comment": comment,
                                                    "line-position": line_position, "indent": indent,
                                                    "brackets": brackets}
KNOWN = ", ".join([*SIGNALS, "regex:PATTERN"])


def parse(spec: str) -> Callable[[str], np.ndarray]:
    """--find PREDICATE -> its signal function; an unknown predicate or a bad pattern is a usage error."""
    if spec.startswith("regex:"):
        pattern = spec[len("regex:") :]
        if not pattern:
            raise UsageError("--find regex: needs a pattern after the colon, e.g. --find 'regex:if .*:'")
        try:
            return functools.partial(regex, pattern=re.compile(pattern))
        except re.error as e:
            raise UsageError(f"--find {spec!r}: bad regular expression: {e}") from None
        except (OverflowError, RecursionError) as e:  # a repeat count past 2**32 - 1; thousands of nested groups
            why = "a repeat count is too large" if isinstance(e, OverflowError) else "it nests too deeply"
            raise UsageError(f"--find regex: the pattern cannot be compiled: {why}; simplify it") from None
    if spec not in SIGNALS:
        raise UsageError(f"--find {spec!r}: unknown predicate; known: {KNOWN}")
    return SIGNALS[spec]
