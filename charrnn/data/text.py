"""Reading UTF-8: the one decoder that corpus preparation, `score` and primes share.

Text is kept as it is but for a leading byte-order mark, which is dropped. Data that is not UTF-8 text is refused
by its first bytes: a UTF-16/32 byte-order mark (with the iconv command that converts it) or a NUL byte in the
first BINARY_SNIFF bytes (binary). Invalid UTF-8 is an error naming the input and the byte offset, unless
--encoding-errors replace (each invalid byte becomes U+FFFD) or skip (dropped) is given; then BadBytes counts
them and remembers the first, for the caller to report.
"""

from __future__ import annotations

import codecs
import contextlib
import shlex
import sys
from collections.abc import Iterator

from charrnn.errors import CharrnnError, UsageError

BINARY_SNIFF = 8000  # a NUL byte in this many leading bytes marks a binary file
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
             (b"\xfe\xff", "UTF-16"))  # byte-order marks of encodings that are not UTF-8, longest first
BOM = "\ufeff"
STDIN = "-"


def not_text(name: str, head: bytes) -> tuple[str, CharrnnError] | None:
    """Why a file that starts with head is not UTF-8 text, as (kind, error): kind 'UTF-16' or 'UTF-32' by a
    byte-order mark, 'binary' by a NUL byte in the first BINARY_SNIFF bytes. None for text."""
    for bom, encoding in WIDE_BOMS:
        if head.startswith(bom):
            return encoding, CharrnnError(
                f"{name} is {encoding} text (byte-order mark {bom.hex(' ').upper()}), not UTF-8; convert it: "
                f"iconv -f {encoding} -t UTF-8 {shlex.quote(name)} > converted.txt")
    offset = head[:BINARY_SNIFF].find(b"\x00")
    return ("binary", binary_file(name, offset)) if offset >= 0 else None


def binary_file(name: str, offset: int) -> CharrnnError:
    return CharrnnError(f"{name} looks like a binary file (NUL byte at offset {offset}); give a UTF-8 text file")


def not_utf8(name: str, byte: int, offset: int, where: str = "", flag: bool = True) -> CharrnnError:
    also = " or pass --encoding-errors replace (or skip)" if flag else ""
    return CharrnnError(f"{name} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}{where}; "
                        f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8){also}")


class BadBytes:
    """--encoding-errors replace|skip: a codec error handler that replaces (U+FFFD per byte) or drops invalid
    bytes, counting them and remembering the first one's input and offset. Readers set label and base (the
    absolute offset of the bytes being decoded) before each decode; one BadBytes may serve several inputs."""

    def __init__(self, mode: str):
        self.mode, self.count, self.first = mode, 0, ""
        self.label, self.base = "", 0
        self.handler = "strict" if mode == "strict" else f"charrnn-{mode}-{id(self)}"
        if mode != "strict":
            codecs.register_error(self.handler, self.handle)

    def handle(self, e: UnicodeDecodeError) -> tuple[str, int]:
        if not self.count:
            self.first = f"{self.label} at byte offset {self.base + e.start}"
        self.count += e.end - e.start
        return ("\ufffd" if self.mode == "replace" else "") * (e.end - e.start), e.end

    def report(self) -> str:
        """The stderr line for what was replaced or skipped, or '' when every byte was valid UTF-8."""
        if not self.count:
            return ""
        done = "replaced with U+FFFD" if self.mode == "replace" else "skipped"
        return (f"{self.count:,} invalid UTF-8 byte{'s' * (self.count != 1)} {done} (--encoding-errors "
                f"{self.mode}); the first in {self.first}")


class Reader:
    """One input's bytes, given piece by piece in order, decoded as UTF-8. A character split across two pieces
    waits in the decoder for its remaining bytes; offsets in errors count from the input's first byte.
    flag: whether the strict error may suggest --encoding-errors (the command has it)."""

    def __init__(self, name: str, bad: BadBytes | None = None, flag: bool = True):
        self.name, self.bad, self.flag = name, bad or BadBytes("strict"), flag
        self.decoder = codecs.getincrementaldecoder("utf-8")(self.bad.handler)
        self.offset, self.started = 0, False  # bytes read so far; whether the first character (a BOM?) was seen

    def decode(self, data: bytes, final: bool = False, ascii_as_bytes: bool = False, where: str = "") -> str | bytes:
        """The characters that data completes (a leading BOM dropped). ascii_as_bytes: a pure-ASCII piece is
        returned as the bytes themselves (bytes are code points), skipping the decoder (the common case of code)."""
        self.sniff(data)
        pending = self.decoder.getstate()[0]  # bytes of an unfinished character from the previous piece
        base = self.offset - len(pending)
        self.offset += len(data)
        if ascii_as_bytes and not pending and data.isascii():
            text: str | bytes = data
        else:
            self.bad.label, self.bad.base = self.name, base
            try:
                text = self.decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                raise not_utf8(self.name, e.object[e.start], base + e.start, where, self.flag) from None
        if text and not self.started:
            self.started = True
            if isinstance(text, str) and text[0] == BOM:
                text = text[1:]
        return text

    def sniff(self, data: bytes) -> None:
        """Refuse data that is not UTF-8 text: a wide byte-order mark at the start, a NUL in the first bytes."""
        if self.offset >= BINARY_SNIFF:
            return
        problem = not_text(self.name, data) if self.offset == 0 else None
        if problem is None and (nul := data[: BINARY_SNIFF - self.offset].find(b"\x00")) >= 0:
            problem = ("binary", binary_file(self.name, self.offset + nul))
        if problem is not None:
            raise problem[1]


def stdin_bytes():
    """stdin as bytes; a stdin the shell closed (<&-) is a usage error."""
    if sys.stdin is None:
        raise UsageError("stdin is closed; pipe text in (e.g. cat FILE | charrnn ...) or give a file")
    return sys.stdin.buffer


def unreadable(name: str, e: OSError) -> CharrnnError:
    return CharrnnError(f"cannot read {name}: {e.strerror}")


@contextlib.contextmanager
def open_input(source: str):
    """A file's bytes, or stdin's for '-'; a missing or unreadable file is a one-line error."""
    if source == STDIN:
        yield stdin_bytes()
        return
    try:
        f = open(source, "rb")
    except FileNotFoundError:
        raise CharrnnError(f"no such file: {source}; check the path (or use '-' to read stdin)") from None
    except OSError as e:
        raise unreadable(source, e) from None
    with f:
        yield f


def label(source: str) -> str:
    return "stdin" if source == STDIN else source


def read_text(source: str, errors: str = "strict", flag: bool = True) -> tuple[str, str, str]:
    """(name, text, report) of one whole file, or of stdin for '-': for primes, scoring and `cells`, not corpora.
    report: what --encoding-errors replaced or skipped ('' if nothing)."""
    name, bad = label(source), BadBytes(errors)
    with open_input(source) as f:
        text = Reader(name, bad, flag).decode(f.read(), final=True)
    return name, text, bad.report()


def read_lines(source: str, errors: str = "strict", reports: list[str] | None = None) -> Iterator[str]:
    """UTF-8 lines of a file or of stdin ('-'), newline kept, each as soon as it arrives; invalid bytes as errors
    (--encoding-errors) says. At the end, what was replaced or skipped is appended to reports."""
    bad = BadBytes(errors)
    reader = Reader(label(source), bad)
    with open_input(source) as lines:
        for number, raw in enumerate(lines, 1):
            yield reader.decode(raw, where=f" (line {number})")
        reader.decode(b"", final=True, where=" (the last line)")
    if bad.count and reports is not None:
        reports.append(bad.report())
