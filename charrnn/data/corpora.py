"""Named corpora that `charrnn corpus get` can write: built in (no download) or fetched."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from charrnn.atomic import replacing
from charrnn.data import download
from charrnn.errors import CharrnnError, UsageError

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def python_sources() -> list[Path]:
    """The running interpreter's standard-library .py files, tests excluded, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]) and not p.name.startswith("test_")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def write_python(out: Path) -> int:
    """Concatenate the standard library's source into out; returns the characters written."""
    chars = 0
    with replacing(out, "w", encoding="utf-8", newline="") as f:
        for path in python_sources():
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few legacy files are not UTF-8; the corpus does without them
            f.write(text if text.endswith("\n") else text + "\n")
            chars += len(text) + (not text.endswith("\n"))
    return chars


def python_names() -> list[str]:
    """The public names the standard library defines: its modules, and the functions, classes and methods of its
    .py files (read with ast, nothing imported), sorted, each once."""
    import ast
    import sys

    names = {m for m in sys.stdlib_module_names if not m.startswith("_")}
    for path in python_sources():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a file this interpreter cannot parse: the list does without it
        defined = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        nodes = [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body)]  # and methods
        names.update(n.name for n in nodes if isinstance(n, defined) and not n.name.startswith("_"))
    return sorted(names)


def write_python_names(out: Path) -> int:
    text = "".join(name + "\n" for name in python_names())
    with replacing(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return len(text)


SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def write_shakespeare(out: Path, url: str | None = None) -> int:
    """Download tiny Shakespeare and verify its checksum; returns its characters. A failure leaves out as it was."""
    download.fetch(url or SHAKESPEARE_URL, out, SHAKESPEARE_SHA256, default=SHAKESPEARE_URL)
    return len(out.read_text(encoding="utf-8"))


CATALOGUE = {  # name: (what it is, its size and where it comes from; writer(out, url) -> characters written)
    "python": ("the Python standard library's own source, about 12 MB, from this interpreter (no download)",
               lambda out, url: write_python(out)),
    "python-names": ("the names of the Python standard library's modules, classes, functions and methods, one per "
                     "line, about 7,000, from this interpreter (no download): a list for train --items",
                     lambda out, url: write_python_names(out)),
    "tinyshakespeare": ("tiny Shakespeare, 1,115,394 characters (1.1 MB), downloaded from " + SHAKESPEARE_URL,
                        write_shakespeare),
}
DOWNLOADED = {"tinyshakespeare"}  # the corpora --url applies to


def get(name: str, out: Path | None, url: str | None = None) -> tuple[Path, int]:
    if name not in CATALOGUE:
        raise UsageError(f"unknown corpus {name!r}; see charrnn corpus list")
    if url is not None and name not in DOWNLOADED:
        raise UsageError(f"{name} is built in, not downloaded; --url applies to {', '.join(sorted(DOWNLOADED))}")
    if out is not None and not out.parent.exists():  # make only what was asked for
        raise UsageError(f"no directory {out.parent} to write {out.name} in; create it first, or choose another "
                         "-o PATH")
    if out is None or out.is_dir():
        out = (out or Path("corpora")) / f"{name}.txt"
    try:
        out.parent.mkdir(exist_ok=True)  # ./corpora, the default
        return out, CATALOGUE[name][1](out, url)
    except OSError as e:
        raise CharrnnError(f"cannot write {out}: {e.strerror}; choose another -o PATH") from None
