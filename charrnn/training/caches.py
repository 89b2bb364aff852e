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
from pathlib import Path

from charrnn.atomic import HOST
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
