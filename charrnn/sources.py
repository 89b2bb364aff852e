"""Corpus inputs: files, directories (recursive, optional --glob), or '-' for stdin spooled to a file.

Inputs are joined in a stable order: the arguments in the order given, each directory's files sorted by their
path relative to it. A file reached twice is read once. Hidden files and directories (names starting with '.')
inside a directory are not searched; binary files found there are skipped and counted, while a binary file named
on the command line is an error.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from charrnn.console import warn
from charrnn.errors import CharrnnError, UsageError

BINARY_SNIFF = 8000  # a NUL byte in this many leading bytes marks a binary file
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
    skipped_binary: int = 0  # binary files found in directories and left out
    spool: Path | None = field(default=None, repr=False)  # stdin's temporary copy; removed by close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
            self.spool = None


def nul_offset(path: Path) -> int | None:
    """Offset of the first NUL byte in the file's first BINARY_SNIFF bytes, or None for text."""
    with open(path, "rb") as f:
        offset = f.read(BINARY_SNIFF).find(b"\x00")
    return None if offset < 0 else offset


def matches(relative: PurePosixPath, pattern: str | None) -> bool:
    """--glob: a pattern without '/' matches the file name ('*.c'); with '/', the path below the directory."""
    if pattern is None:
        return True
    return relative.match(pattern) if "/" in pattern else fnmatch.fnmatchcase(relative.name, pattern)


def walk(root: Path, pattern: str | None) -> list[Path]:
    """The files under root (recursive, hidden entries and symlinked directories left out), sorted."""
    found = []
    for directory, dirs, files in os.walk(root, onerror=lambda e: _unreadable(e.filename, e)):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(directory, name)
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not name.startswith(".") and path.is_file() and matches(relative, pattern):
                found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found)]


def _unreadable(name: str, e: OSError):
    raise CharrnnError(f"cannot read {name}: {e.strerror}")


def binary_file(name: str, offset: int) -> CharrnnError:
    return CharrnnError(f"{name} looks like a binary file (NUL byte at offset {offset}); give a UTF-8 text file")


def not_utf8(name: str, byte: int, offset: int, where: str = "") -> CharrnnError:
    return CharrnnError(f"{name} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}{where}; "
                        "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


@contextlib.contextmanager
def open_input(source: str):
    """A file's bytes, or stdin's for '-'; a missing or unreadable file is a one-line error."""
    if source == STDIN:
        yield sys.stdin.buffer
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
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="stdin-", suffix=".part", dir=directory)
    except OSError as e:
        raise CharrnnError(f"cannot keep stdin in {directory}: {e.strerror}; choose another --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := sys.stdin.buffer.read(SPOOL_CHUNK):
                f.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def expand(arg: str, pattern: str | None) -> tuple[list[Path], int]:
    """One non-stdin argument -> (its text files, binary files skipped)."""
    path = Path(arg)
    if path.is_dir():
        files = walk(path, pattern)
        text = [f for f in files if _sniff(f) is None]
        if not text:
            glob = f" matching --glob {pattern!r}" if pattern else ""
            raise CharrnnError(f"{arg} holds no text files{glob} ({len(files) - len(text)} binary skipped); "
                               "point at a directory of UTF-8 text")
        return text, len(files) - len(text)
    if not path.exists():
        raise CharrnnError(f"no such file or directory: {arg}; check the path (or use '-' to read stdin)")
    offset = _sniff(path)
    if offset is not None:
        raise binary_file(arg, offset)
    return [path], 0


def _sniff(path: Path) -> int | None:
    try:
        return nul_offset(path)
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
            files, skipped = expand(arg, pattern)
            inputs.skipped_binary += skipped
            for f in files:
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
    """Default run name: the file's stem, 'stdin', the directory's name; several: 'FIRST-and-N-more'."""
    return _stem(args[0]) if len(args) == 1 else f"{_stem(args[0])}-and-{len(args) - 1}-more"
