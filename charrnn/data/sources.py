"""Corpus inputs: files, directories (recursive, optional --glob), or '-' for stdin spooled to a file.

Inputs are joined in a stable order: the arguments in the order given, each directory's files sorted by their
path relative to it. A file reached twice is read once. Hidden files and directories (names starting with '.')
inside a directory are not searched, and counted; binary and UTF-16/32 files found there are skipped and counted,
while such a file named on the command line is an error.

What is left out or ignored is returned in Inputs (skipped, warnings) for the caller to report.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from charrnn.atomic import temp_file
from charrnn.data.text import BINARY_SNIFF, STDIN, not_text, stdin_bytes, unreadable
from charrnn.errors import CharrnnError, UsageError

SPOOL_CHUNK = 4 << 20  # bytes of stdin copied at a time while spooling
RUN_FILES = ("best.safetensors", "last.safetensors", "metrics.jsonl")  # what makes a directory a charrnn run


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
    warnings: list[str] = field(default_factory=list)  # what the caller should warn about (an unused --glob)
    spool: Path | None = field(default=None, repr=False)  # stdin's temporary copy; removed by close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
            self.spool = None


def matches(relative: PurePosixPath, pattern: str | None) -> bool:
    """--glob: a pattern without '/' matches the file name ('*.c'); with '/', the path below the directory."""
    if pattern is None:
        return True
    return relative.match(pattern) if "/" in pattern else fnmatch.fnmatchcase(relative.name, pattern)


def raise_unreadable(name: str, e: OSError):
    raise unreadable(name, e)


def output(directory: Path, out: Path | None) -> bool:
    """Whether a directory is charrnn's own output: --out itself, or a run directory (of any --out)."""
    return (out is not None and directory.resolve() == out.resolve()) or any(
        (directory / name).is_file() for name in RUN_FILES)


def walk(root: Path, pattern: str | None, out: Path | None = None) -> tuple[list[Path], int, int]:
    """(the files under root, sorted; hidden files and directories left out and charrnn's output directories
    (see output) too), the hidden entries left out, the output directories left out.
    Recursive; symlinked directories are not followed."""
    found, hidden, outputs = [], 0, 0
    for directory, dirs, files in os.walk(root, onerror=lambda e: raise_unreadable(e.filename, e)):
        hidden += sum(name.startswith(".") for name in dirs + files)
        mine = [d for d in dirs if not d.startswith(".") and output(Path(directory, d), out)]
        outputs += len(mine)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in mine]
        for name in files:
            path = Path(directory, name)
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not name.startswith(".") and path.is_file() and matches(relative, pattern):
                found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found)], hidden, outputs


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
    except OSError as e:  # a full disk, a file size limit (ulimit -f)
        path.unlink(missing_ok=True)
        raise CharrnnError(f"cannot keep stdin in {directory}: {e.strerror}; free some space or choose another "
                           "--out") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def expand(arg: str, pattern: str | None, skipped: dict[str, int], out: Path | None = None) -> list[Path]:
    """One non-stdin argument -> its text files; what a directory's walk leaves out is added to skipped."""
    path = Path(arg)
    if path.is_dir():
        files, hidden, outputs = walk(path, pattern, out)
        text = []
        for f in files:
            problem = _sniff(f)
            if problem is None:
                text.append(f)
            else:
                skipped[problem[0]] = skipped.get(problem[0], 0) + 1
        for kind, n in (("hidden", hidden), ("output", outputs)):
            if n:
                skipped[kind] = skipped.get(kind, 0) + n
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
    """'2 binary files, 1 UTF-16 file, 3 hidden files or directories, 1 charrnn output directory'."""
    nouns = {"hidden": ("hidden file or directory", "hidden files or directories"),
             "output": ("charrnn output directory (--out or a run)", "charrnn output directories (--out or runs)")}
    order = ["binary", "UTF-16", "UTF-32", "hidden", "output"]
    return ", ".join(f"{n:,} " + (nouns[k][n != 1] if k in nouns else f"{k} {'file' if n == 1 else 'files'}")
                     for k, n in sorted(skipped.items(), key=lambda item: order.index(item[0])))


def _sniff(path: Path, name: str | None = None) -> tuple[str, CharrnnError] | None:
    try:
        with open(path, "rb") as f:
            return not_text(name or str(path), f.read(BINARY_SNIFF))
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror}") from None


def collect(args: list[str], pattern: str | None, spool_dir: Path, out: Path | None = None) -> Inputs:
    """Command-line inputs -> the files to read, in order. stdin is spooled into spool_dir. A directory's walk
    leaves out out (the runs' directory) and every run directory below it."""
    if not args:
        raise UsageError("give at least one input: a file, a directory, or - for stdin")
    if args.count(STDIN) > 1:
        raise UsageError("stdin ('-') can be given only once")
    inputs = Inputs([], corpus_name(args))
    if pattern is not None and not any(arg != STDIN and Path(arg).is_dir() for arg in args):
        inputs.warnings.append(f"--glob {pattern!r} filters the files of directories, and no directory was given; "
                               "ignored")
    seen: set[Path] = set()
    try:
        for arg in args:
            if arg == STDIN:
                inputs.spool = spool_stdin(spool_dir)
                inputs.sources.append(Source(inputs.spool, "stdin", "stdin"))
                continue
            for f in expand(arg, pattern, inputs.skipped, out):
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
