"""A run directory: OUT/RUN with best.safetensors, last.safetensors and metrics.jsonl; saving and resuming."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import tempfile
from pathlib import Path

import torch

from charrnn import checkpoint
from charrnn.atomic import replacing
from charrnn.checkpoint import BEST, LAST
from charrnn.config import ModelConfig
from charrnn.corpus import Corpus
from charrnn.errors import CharrnnError, CheckpointError, UsageError
from charrnn.model import CharRNN
from charrnn.train import Event, Progress, Trainer
from charrnn.vocab import REPLACEMENT, Vocab

METRICS = "metrics.jsonl"
CACHE_DIR = ".cache"  # under --out: id caches shared by every run there, deleted with the checkpoints


def check_name(name: str) -> None:
    """A run name is one plain path component, so OUT/RUN stays inside OUT and apart from OUT/.cache."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise UsageError(f"--run {name!r} is not a plain name: give one directory name inside --out, "
                         "without '/' and not starting with '.' (e.g. --run shakespeare-2)")


def claim(directory: Path, force: bool, resume: bool) -> list[Path]:
    """Before any work: refuse to overwrite a run unless forced; create the directory; check it is writable.
    Returns the directories this created (for release), deepest first."""
    if not resume and any((directory / name).exists() for name in (BEST, LAST)) and not force:
        raise CharrnnError(f"{directory} already holds a run; choose another --run NAME, "
                           "continue it with --resume, or pass --force to overwrite it")
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        release(directory, created)
        raise CharrnnError(f"cannot write to {directory}: {e.strerror}; choose another --out") from None
    checkpoint.clean_temp(directory)
    return created


def release(directory: Path, created: list[Path]) -> None:
    """After a failed train: the directories it created go again, with the metrics of a run that never
    saved a checkpoint (and the corpus cache, when OUT itself is new); anything else stays."""
    if directory in created and not (directory / LAST).exists():
        with contextlib.suppress(OSError):
            (directory / METRICS).unlink()
    if directory.parent in created:  # OUT is this command's own, and so is the corpus cache in it
        shutil.rmtree(directory.parent / CACHE_DIR, ignore_errors=True)
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


def clear(directory: Path) -> None:
    """Remove a forced-over run's files, once the new run is ready to start."""
    for name in (BEST, LAST, METRICS):
        (directory / name).unlink(missing_ok=True)


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
            row = {k: v for k, v in event.metrics.items() if k != "improved"}
            with open(self.directory / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if event.kind == "eval" and event.metrics["improved"]:
            self.save(BEST, full=False)
        if event.kind in ("eval", "save") or (event.kind == "end" and self.saved_step != self.trainer.progress.step):
            self.save(LAST, full=True)

    def meta(self) -> dict:
        t = self.trainer
        progress = dataclasses.asdict(t.progress)
        progress["best_val"] = progress["best_val"] if math.isfinite(progress["best_val"]) else None
        return {"model": dataclasses.asdict(t.model.cfg), "train": dataclasses.asdict(t.cfg),
                "vocab": self.corpus.vocab.chars, "progress": progress,
                "epoch": t.progress.epoch + t.progress.window / len(t.train),
                "corpus": {"name": self.corpus.name, "fingerprint": self.corpus.fingerprint}}

    def save(self, name: str, full: bool) -> None:
        t, meta = self.trainer, self.meta()
        tensors = {f"model.{k}": v for k, v in t.model.state_dict().items()}
        if not all(torch.isfinite(v).all() for v in tensors.values()):
            raise CharrnnError(f"the weights became non-finite at step {t.progress.step} and were not saved; "
                               f"{self.last_good()}; try a lower --lr")
        if full:
            optim, meta["optim_groups"] = checkpoint.pack_optimizer(t.optimizer)
            tensors.update(optim)
            tensors.update(t.carried())
            meta["rng_python"] = random.getstate()
        try:
            checkpoint.save(self.directory / name, tensors, meta)
        except OSError as e:
            raise CharrnnError(f"could not write {self.directory / name}: {e.strerror}; {self.last_good()}") from None
        self.saved_step = t.progress.step

    def last_good(self) -> str:
        return last_good(self.directory)


def last_good(directory: Path) -> str:
    """Names the checkpoint on disk (read back: a save interrupted after its rename is in place)."""
    step = checkpoint.saved_step(directory / LAST)
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
    return checkpoint.load(directory / LAST)


def restore(trainer: Trainer, tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Put a trainer back exactly where last.safetensors (path) left it; every tensor is checked first."""
    weights = fitting_weights(path, trainer.model, tensors)
    try:
        trainer.model.load_state_dict(weights)
        checkpoint.unpack_optimizer(trainer.optimizer, tensors)
        state = tuple(tensors[f"state.{i}"] for i in range(len(trainer.state)))
        if any(s.shape != t.shape or not s.is_floating_point() for s, t in zip(state, trainer.state, strict=True)):
            raise ValueError("the carried state (state.*) does not fit the model and --batch-size")
        trainer.state = tuple(s.to(trainer.device, torch.float32) for s in state)
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and trainer.device.type == "cuda":
            torch.cuda.set_rng_state_all(list(tensors["rng.cuda"]))
        version, state, gauss = meta["rng_python"]
        random.setstate((version, tuple(state), gauss))
        progress = dict(meta["progress"])
        progress["best_val"] = math.inf if progress["best_val"] is None else progress["best_val"]
        trainer.progress = Progress(**progress)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} cannot be resumed from: {e}"[:300] + "; it was not written by this "
                              "charrnn") from None


def fitting_weights(path: Path, model: CharRNN, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's model.* tensors as float32, once each is known to be there with the model's shape."""
    weights = checkpoint.split(tensors, "model")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if v.is_floating_point()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | weights.keys() if expected.get(k) != found.get(k))
        raise CheckpointError(f"{path}: tensor model.{wrong[0]} is missing or does not fit the model its metadata "
                              "describes; it was not written by this charrnn")
    return {k: v.float() for k, v in weights.items()}


def load_model(path: Path, device: torch.device) -> tuple[CharRNN, Vocab, dict]:
    """A checkpoint file's model (eval mode, on device), vocab and metadata.

    The model is built on the meta device and takes the file's tensors, so a file whose config
    disagrees with its tensors (or asks for a huge model) fails before any memory is allocated."""
    tensors, meta = checkpoint.load(path)  # metadata checked: types, sizes within bounds, vocab size
    folds = meta["train"].get("min_char_count", 0) > 1 and REPLACEMENT in meta["vocab"]
    vocab = Vocab(meta["vocab"], fallback=REPLACEMENT if folds else None)
    with torch.device("meta"):
        model = CharRNN(ModelConfig(**meta["model"]), init=False)
    model.load_state_dict(fitting_weights(path, model, tensors), assign=True)
    return model.to(device).eval(), vocab, meta
