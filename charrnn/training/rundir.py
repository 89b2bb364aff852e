"""A run directory: OUT/RUN with best.safetensors, last.safetensors and metrics.jsonl; claiming it before a run,
recording a run into it (the Recorder), releasing what a failed run made."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.atomic import HOST, replacing, umask
from charrnn.data import items
from charrnn.data.corpus import Corpus
from charrnn.data.items import MEMORY
from charrnn.errors import CharrnnError, UsageError
from charrnn.model import files
from charrnn.model.files import BEST, LAST
from charrnn.training.trainer import Event, Trainer

METRICS = "metrics.jsonl"
LOCK = ".lock"  # held (flock) by the process writing a run directory; holds its PID@HOST
CACHE_DIR = ".cache"  # under --out: id caches shared by every run there, deleted with the checkpoints


def check_name(name: str) -> None:
    """A run name is one plain path component, so OUT/RUN stays inside OUT and apart from OUT/.cache."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise UsageError(f"--run {name!r} is not a plain name: give one directory name inside --out, "
                         "without '/' and not starting with '.' (e.g. --run shakespeare-2)")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UsageError(f"--run {name!r} holds a control character (a newline, a tab...); give a name of "
                         "printable characters (e.g. --run shakespeare-2)")


@dataclass
class Claim:
    """A run directory held by this process: the directories claim created (deepest first) and the lock."""

    directory: Path
    created: list[Path]
    lock: int | None = None  # the locked file's descriptor; the OS frees the lock when the process ends


def claim(directory: Path, force: bool, resume: bool) -> Claim:
    """Before any work: create the directory, check it is writable, lock it against every other writer (another
    train, --resume or --force on it), refuse to overwrite a run unless forced."""
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    held = Claim(directory, created)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        held.lock = lock(directory)
    except OSError as e:
        release(held)
        raise CharrnnError(f"cannot write to {directory}: {e.strerror}; choose another --out") from None
    except BaseException:
        release(held)
        raise
    odd = [directory / name for name in (BEST, LAST, METRICS) if (directory / name).exists()
           and not (directory / name).is_file()]
    if odd:
        release(held)
        raise CharrnnError(f"{odd[0]} is in the way (not a file); move it, or choose another --run NAME")
    if not resume and any((directory / name).exists() for name in (BEST, LAST)) and not force:
        release(held)
        raise CharrnnError(f"{directory} already holds a run; choose another --run NAME, "
                           "continue it with --resume, or pass --force to overwrite it")
    files.clean_temp(directory)
    return held


def lock(directory: Path) -> int:
    """Hold OUT/RUN/.lock with flock, writing PID@HOST into it; a lock whose process has ended (even by kill -9)
    is free again. Another process's lock is an error naming it."""
    path = directory / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            pid = holder.split("@")[0]
            raise CharrnnError(f"{directory} is in use by another charrnn run (process {holder}); wait for it to "
                               f"finish, or stop it (kill {pid}) and then --resume") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not a file its last holder unlinked meanwhile
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}@{HOST}\n".encode())
            return fd
        os.close(fd)


def unlock(held: Claim) -> None:
    """Free the run directory: the lock file goes, then the lock."""
    if held.lock is not None:
        with contextlib.suppress(OSError):
            (held.directory / LOCK).unlink()
        os.close(held.lock)
        held.lock = None


def release(held: Claim) -> None:
    """After a failed train: the directories it created go again, with the metrics of a run that never
    saved a checkpoint (and the corpus cache, when OUT itself is new); anything else stays. The lock is freed."""
    directory, created = held.directory, held.created
    if directory in created and not (directory / LAST).exists():
        for name in (METRICS, MEMORY):
            with contextlib.suppress(OSError):
                (directory / name).unlink()
    if directory.parent in created:  # OUT is this command's own, and so is the corpus cache in it
        shutil.rmtree(directory.parent / CACHE_DIR, ignore_errors=True)
    unlock(held)
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


def clear(directory: Path) -> None:
    """Remove a forced-over run's files, once the new run is ready to start."""
    for name in (BEST, LAST, METRICS, MEMORY):
        (directory / name).unlink(missing_ok=True)


def remember_items(directory: Path, corpus: Corpus) -> None:
    """An items-mode run's item memory (items.safetensors): which items it trains on and which it holds out."""
    train, held_out = corpus.items.hashes(corpus.ids)
    try:
        items.save_memory(directory / items.MEMORY, items.Memory(corpus.items.separator, train, held_out))
    except OSError as e:
        raise CharrnnError(f"cannot write {directory / items.MEMORY}: {e.strerror}") from None


class Recorder:
    """Trainer listener: metrics.jsonl at every log and evaluation; last.safetensors at every evaluation,
    every --save-every steps and at the end; best.safetensors when validation improves."""

    def __init__(self, directory: Path, trainer: Trainer, corpus: Corpus):
        self.directory, self.trainer, self.corpus = directory, trainer, corpus
        self.saved_step: int | None = trainer.progress.step if (directory / LAST).exists() else None
        if self.saved_step is not None:
            self.trim_metrics()

    def trim_metrics(self) -> None:
        """On resume, drop rows logged after the checkpoint (a crash loses those steps; they will be logged again)."""
        path = self.directory / METRICS
        try:
            rows = [r for r in path.read_text(encoding="utf-8").splitlines(keepends=True) if logged_by(r, self.trainer)]
            with replacing(path, "w", encoding="utf-8") as f:
                f.write("".join(rows))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CharrnnError(f"cannot rewrite {path}: {e.strerror}; {self.last_good()}") from None

    def __call__(self, event: Event) -> None:
        if event.kind in ("log", "eval"):
            self.append({k: v for k, v in event.metrics.items() if k != "improved"})
        if event.kind == "eval" and event.metrics["improved"]:
            self.save(BEST, full=False)
        if event.kind in ("eval", "save") or (event.kind == "end" and self.saved_step != self.trainer.progress.step):
            self.save(LAST, full=True)

    def append(self, row: dict) -> None:
        """One metrics row, valid JSON (a non-finite loss of skipped steps is null); a failed write is one line."""
        path = self.directory / METRICS
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, allow_nan=False) + "\n")
        except OSError as e:
            raise CharrnnError(f"cannot write {path}: {e.strerror}; {self.last_good()}") from None

    def meta(self) -> dict:
        t = self.trainer
        lineage = getattr(self.corpus, "lineage", None)  # a fine-tuning run's (training/finetune.py): where it began
        return {"model": dataclasses.asdict(t.model.cfg), "train": dataclasses.asdict(t.cfg),
                "vocab": self.corpus.vocab.chars, "epoch": t.progress.epoch + t.progress.window / len(t.train_streams),
                "corpus": {"name": self.corpus.name, "fingerprint": self.corpus.fingerprint,
                           "files": self.corpus.files}, **({"lineage": lineage} if lineage else {})}

    def save(self, name: str, full: bool) -> None:
        """full: last.safetensors, all of Trainer.state_dict(); else best.safetensors, the model and progress."""
        t = self.trainer
        sd = t.state_dict() if full else {"model": t.model.state_dict(), "progress": dataclasses.asdict(t.progress)}
        if not all(torch.isfinite(v).all() for v in sd["model"].values()):
            raise CharrnnError(f"the weights became non-finite at step {t.progress.step} and were not saved; "
                               f"{self.last_good()}; try a lower --lr")
        tensors, entries = files.pack(sd)
        try:
            files.save(self.directory / name, tensors, {**self.meta(), **entries})
        except OSError as e:
            raise CharrnnError(f"could not write {self.directory / name}: {e.strerror}; {self.last_good()}") from None
        self.saved_step = t.progress.step

    def last_good(self) -> str:
        return last_good(self.directory)


def last_good(directory: Path) -> str:
    """Names the checkpoint on disk (read back: a save interrupted after its rename is in place)."""
    step = files.saved_step(directory / LAST)
    if step is None:
        return "no checkpoint had been written yet"
    return f"the last good checkpoint is {directory / LAST} (step {step})"


def logged_by(row: str, trainer: Trainer) -> bool:
    """Whether a metrics row belongs to the run as restored (a row cut short by a crash does not)."""
    try:
        return json.loads(row)["step"] <= trainer.progress.step
    except (ValueError, KeyError, TypeError):
        return False


def read_last(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not (directory / LAST).is_file():
        raise CharrnnError(f"nothing to resume: {directory / LAST} does not exist; train without --resume")
    return files.load(directory / LAST)
