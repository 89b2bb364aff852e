"""`charrnn cache`: which entries of OUT/.cache (the id cache, data/idcache.py) the runs under OUT use, and
removing the ones none does.

A run uses an entry when one of its checkpoints (last.safetensors, best.safetensors) was trained on the corpus the
entry holds: the same content fingerprint, --min-char-count and --encoding-errors, so resuming the run from the
same inputs would reuse it. Only the checkpoints' headers are read. An entry is only ever a cache: removing one
costs the next run on that corpus one preparation, nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from charrnn.atomic import HOST
from charrnn.console import info, printable, warn
from charrnn.data import idcache
from charrnn.errors import CheckpointError
from charrnn.model import files
from charrnn.model.files import BEST, LAST
from charrnn.training.rundir import CACHE_DIR, LOCK


def corpus_of(path: Path) -> tuple | None:
    """(fingerprint, min_char_count, encoding_errors) a checkpoint was trained on, from its header alone."""
    with open(path, "rb") as f:
        header = files.read_header(path, f, os.fstat(f.fileno()).st_size)
    try:
        meta = json.loads(header["__metadata__"]["charrnn"])
        train = meta["train"]
        return (meta["corpus"]["fingerprint"], train.get("min_char_count", 0),
                train.get("encoding_errors", "strict"))
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} has no charrnn metadata") from None


def training(run: Path) -> bool:
    """Whether a live process holds the run's lock (read from its PID@HOST, without taking the lock)."""
    try:
        holder = (run / LOCK).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return False
    pid, _, host = holder.partition("@")
    if host != HOST:
        return bool(holder)  # another machine's run: assume it is live
    with contextlib.suppress(ValueError, ProcessLookupError, OverflowError):
        os.kill(int(pid), 0)
        return True
    return False


def runs(out: Path) -> tuple[dict[str, set], list[str], list[str]]:
    """({run name: the corpora its checkpoints name}, the runs training now, checkpoints that could not be read)."""
    used: dict[str, set] = {}
    busy, unreadable = [], []
    for run in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in (LAST, BEST):
            if (run / name).is_file():
                try:
                    used.setdefault(run.name, set()).add(corpus_of(run / name))
                except (OSError, CheckpointError):
                    unreadable.append(str(run / name))
        if training(run):
            busy.append(run.name)
    return used, busy, unreadable


def key(meta: dict) -> tuple | None:
    """The corpus an entry holds, as corpus_of names it; None for an entry no run can reuse (older format)."""
    if meta.get("format") != idcache.FORMAT or "fingerprint" not in meta:
        return None
    return meta["fingerprint"], meta.get("min_char_count", 0), meta.get("encoding_errors", "strict")


def survey(out: Path) -> tuple[list[dict], list[str], list[str]]:
    """The entries in OUT/.cache, oldest first, each with "runs" (the names of the runs using it), then the runs
    training now and the checkpoints that could not be read."""
    entries = idcache.stored(out / CACHE_DIR)
    used, busy, unreadable = runs(out) if entries else ({}, [], [])
    for entry in entries:
        held = key(entry["meta"])
        entry["runs"] = [name for name, corpora in used.items() if held is not None and held in corpora]
    return entries, busy, unreadable


def surveyed(out: Path, prune: bool) -> tuple[list[dict], list[str]] | None:
    """survey(out), the unreadable checkpoints warned about; None (said) when there is no cache."""
    entries, busy, unreadable = survey(out)
    if not entries:
        info(f"no corpus cache in {printable(str(out))}: nothing to list" + (" or remove" if prune else ""))
        return None
    for path in unreadable:
        warn(f"cannot read {path}; the corpus it was trained on counts as unused")
    return entries, busy


def listing(out: Path) -> Iterator[str]:
    """`charrnn cache`: a tab-separated line per entry (key, MB, age, the runs using it or -, its inputs); the
    total on stderr after them."""
    found = surveyed(out, prune=False)
    if found is None:
        return
    entries = found[0]
    for e in entries:
        yield f"{e['stem']}\t{mb(e['bytes'])}\t{age(e['mtime'])}\t{','.join(e['runs']) or '-'}\t{inputs(e['meta'])}\n"
    unused = [e for e in entries if not e["runs"]]
    info(f"{entries_count(len(entries))} in {printable(str(out / CACHE_DIR))}, {megabytes(entries)}; "
         + (f"{len(unused)} used by no run ({megabytes(unused)}): charrnn cache --prune removes "
            f"{'it' if len(unused) == 1 else 'them'}" if unused else "every one used by a run"))


def prune(out: Path) -> None:
    """`charrnn cache --prune`: remove the entries no run under out uses, unless a run is training there."""
    found = surveyed(out, prune=True)
    if found is None:
        return
    entries, busy = found
    unused = [e for e in entries if not e["runs"]]
    if busy and unused:
        info(f"removed nothing: {printable(busy[0])} is training under {printable(str(out))} and may be using an "
             "entry its checkpoints do not name yet; prune again once it has finished")
        return
    idcache.remove_stale_parts(out / CACHE_DIR)
    for entry in unused:
        idcache.remove(entry)
        info(f"removed {entry['stem']} ({inputs(entry['meta'])}, {mb(entry['bytes'])} MB)")
    info(f"freed {megabytes(unused)}; kept {entries_count(len(entries) - len(unused))} that runs use")


def inputs(meta: dict) -> str:
    """An entry's inputs as recorded: absolute paths, or stdin."""
    try:
        return printable(", ".join(str(row[0]) for row in meta["inputs"]))
    except (KeyError, TypeError, IndexError):
        return "(unreadable)"


def megabytes(entries: list[dict]) -> str:
    return f"{mb(sum(e['bytes'] for e in entries))} MB"


def mb(size: int) -> str:
    """Bytes as MB: tenths, or thousandths below 0.1 MB (a small test corpus is not 0.0 MB)."""
    return f"{size / 1e6:.1f}" if size >= 1e5 else f"{size / 1e6:.3f}"


def age(mtime: float) -> str:
    """'40 s', '12 min', '5 h', '3 d'."""
    s = max(0, time.time() - mtime)
    return next(f"{s / unit:.0f} {name}" for unit, name in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))
                if s >= unit or unit == 1)


def entries_count(n: int) -> str:
    return f"{n:,} {'entry' if n == 1 else 'entries'}"
