"""Named corpora that `charrnn corpus get` can write: built in (no download) or fetched."""

from __future__ import annotations

import sysconfig
from pathlib import Path

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
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for path in python_sources():
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few legacy files are not UTF-8; the corpus does without them
            f.write(text if text.endswith("\n") else text + "\n")
            chars += len(text) + (not text.endswith("\n"))
    tmp.replace(out)
    return chars


CATALOGUE = {
    "python": ("the Python standard library's own source, from this interpreter (no download)", write_python),
}


def get(name: str, out: Path | None) -> tuple[Path, int]:
    if name not in CATALOGUE:
        raise UsageError(f"unknown corpus {name!r}; see charrnn corpus list")
    out = out or Path("corpora") / f"{name}.txt"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out, CATALOGUE[name][1](out)
    except OSError as e:
        raise CharrnnError(f"cannot write {out}: {e.strerror}; choose another -o PATH") from None
