"""Corpus inputs: files, directories (recursive, optional --glob), or '-' for stdin spooled to a file.

Inputs are joined in a stable order: the arguments in the order given, each directory's files sorted by their
path relative to it. A file reached twice is read once. Hidden files and directories (names starting with '.')
inside a directory are not searched, and counted; binary and UTF-16/32 files found there are skipped and counted,
while such a file named on the command line is an error.

Invalid UTF-8 is an error naming the file and byte offset, unless --encoding-errors replace (each invalid byte
becomes U+FFFD) or skip (dropped) is given; then BadBytes counts them and remembers the first.
"""

from __future__ import annotations

import codecs
import contextlib
import fnmatch
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from charrnn.atomic import temp_file
from charrnn.console import warn
from charrnn.errors import CharrnnError, UsageError

BINARY_SNIFF = 8000  # a NUL byte in this many leading bytes marks a binary file
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
             (b"\xfe\xff", "UTF-16"))  # byte-order marks of encodings that are not UTF-8, longest first
SPOOL_CHUNK = 4 << 20  # bytes of stdin copied at a time while spooling
STDIN = "-"


@dataclass
class Source:
    path: Path  # the file to read (stdin's spool file for '-')
    label: str  # how messages name it: the path as given or found, or "stdin"
    key: str  # what the cache key holds: the absolute path, or "stdin"


@dataclass
class Inputs:
    sources: list[Source]
    name: str  # the corpus's name in messages and checkpoints
    skipped: dict[str, int] = field(default_factory=dict)  # files left out of directories, by kind: binary, ...
    spool: Path | None = field(default=None, repr=False)  # stdin's temporary copy; removed by close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
            self.spool = None


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


def matches(relative: PurePosixPath, pattern: str | None) -> bool:
    """--glob: a pattern without '/' matches the file name ('*.c'); with '/', the path below the directory."""
    if pattern is None:
        return True
    return relative.match(pattern) if "/" in pattern else fnmatch.fnmatchcase(relative.name, pattern)


def walk(root: Path, pattern: str | None) -> tuple[list[Path], int]:
    """(the files under root, sorted; hidden files and directories left out), the hidden entries left out.
    Recursive; symlinked directories are not followed."""
    found, hidden = [], 0
    for directory, dirs, files in os.walk(root, onerror=lambda e: _unreadable(e.filename, e)):
        hidden += sum(name.startswith(".") for name in dirs + files)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(directory, name)
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not name.startswith(".") and path.is_file() and matches(relative, pattern):
                found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found)], hidden


def _unreadable(name: str, e: OSError):
    raise CharrnnError(f"cannot read {name}: {e.strerror}")


def binary_file(name: str, offset: int) -> CharrnnError:
    return CharrnnError(f"{name} looks like a binary file (NUL byte at offset {offset}); give a UTF-8 text file")


def not_utf8(name: str, byte: int, offset: int, where: str = "", flag: bool = True) -> CharrnnError:
    also = " or pass --encoding-errors replace (or skip)" if flag else ""
    return CharrnnError(f"{name} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}{where}; "
                        f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8){also}")


class BadBytes:
    """--encoding-errors replace|skip: a codec error handler that replaces (U+FFFD per byte) or drops invalid
    bytes, counting them and remembering the first one's file and offset. Set label and base (the absolute
    offset of the bytes being decoded) before each decode."""

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


def stdin_bytes():
    """stdin as bytes; a stdin the shell closed (<&-) is a usage error."""
    if sys.stdin is None:
        raise UsageError("stdin is closed; pipe text in (e.g. cat FILE | charrnn ...) or give a file")
    return sys.stdin.buffer


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
        _unreadable(source, e)
    with f:
        yield f


def spool_stdin(directory: Path) -> Path:
    """Copy stdin to a temporary file in directory as it streams in, a chunk at a time."""
    stdin = stdin_bytes()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = temp_file(directory, "stdin", ".part")
    except OSError as e:
        raise CharrnnError(f"cannot keep stdin in {directory}: {e.strerror}; choose another --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := stdin.read(SPOOL_CHUNK):
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def expand(arg: str, pattern: str | None, skipped: dict[str, int]) -> list[Path]:
    """One non-stdin argument -> its text files; what a directory's walk leaves out is added to skipped."""
    path = Path(arg)
    if path.is_dir():
        files, hidden = walk(path, pattern)
        text = []
        for f in files:
            problem = _sniff(f)
            if problem is None:
                text.append(f)
            else:
                skipped[problem[0]] = skipped.get(problem[0], 0) + 1
        if hidden:
            skipped["hidden"] = skipped.get("hidden", 0) + hidden
        if not text:
            glob = f" matching --glob {pattern!r}" if pattern else ""
            raise CharrnnError(f"{arg} holds no UTF-8 text files{glob} (skipped: {count_skipped(skipped) or 'none'});"
                               " point at a directory of UTF-8 text")
        return text
    if not path.exists():
        raise CharrnnError(f"no such file or directory: {arg}; check the path (or use '-' to read stdin)")
    problem = _sniff(path, arg)
    if problem is not None:
        raise problem[1]
    return [path]


def count_skipped(skipped: dict[str, int]) -> str:
    """'2 binary files, 1 UTF-16 file, 3 hidden files or directories'."""
    order = ["binary", "UTF-16", "UTF-32", "hidden"]
    return ", ".join(f"{n:,} {k} {'file' if n == 1 else 'files'}" if k != "hidden"
                     else f"{n:,} hidden {'file or directory' if n == 1 else 'files or directories'}"
                     for k, n in sorted(skipped.items(), key=lambda item: order.index(item[0])))


def _sniff(path: Path, name: str | None = None) -> tuple[str, CharrnnError] | None:
    try:
        with open(path, "rb") as f:
            return not_text(name or str(path), f.read(BINARY_SNIFF))
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror}") from None


def resolve(args: list[str], pattern: str | None, spool_dir: Path) -> Inputs:
    """Command-line inputs -> the files to read, in order. stdin is spooled into spool_dir."""
    if not args:
        raise UsageError("give at least one input: a file, a directory, or - for stdin")
    if args.count(STDIN) > 1:
        raise UsageError("stdin ('-') can be given only once")
    if pattern is not None and not any(arg != STDIN and Path(arg).is_dir() for arg in args):
        warn(f"--glob {pattern!r} filters the files of directories, and no directory was given; ignored")
    inputs = Inputs([], corpus_name(args))
    seen: set[Path] = set()
    try:
        for arg in args:
            if arg == STDIN:
                inputs.spool = spool_stdin(spool_dir)
                inputs.sources.append(Source(inputs.spool, "stdin", "stdin"))
                continue
            for f in expand(arg, pattern, inputs.skipped):
                if f.resolve() not in seen:
                    seen.add(f.resolve())
                    inputs.sources.append(Source(f, str(f), str(f.resolve())))
    except BaseException:
        inputs.close()
        raise
    return inputs


def _stem(arg: str) -> str:
    if arg == STDIN:
        return "stdin"
    path = Path(arg)
    return (path.resolve().name or "root") if path.is_dir() else path.stem


def corpus_name(args: list[str]) -> str:
    """A file's name, 'stdin', 'DIR/'; several inputs: the first one's and how many more."""
    first = args[0]
    name = "stdin" if first == STDIN else (_stem(first) + "/") if Path(first).is_dir() else Path(first).name
    return name if len(args) == 1 else f"{name} + {len(args) - 1} more"


def run_name(args: list[str]) -> str:
    """Default run name: the file's stem, 'stdin', the directory's name; several: 'FIRST-and-N-more'.
    Leading dots are dropped (.bashrc -> bashrc): a run name never starts with one."""
    name = _stem(args[0]) if len(args) == 1 else f"{_stem(args[0])}-and-{len(args) - 1}-more"
    return name.lstrip(".") or "run"
