"""A run directory: OUT/RUN with best.safetensors, last.safetensors and metrics.jsonl."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from charrnn import checkpoint
from charrnn.checkpoint import BEST, LAST
from charrnn.config import ModelConfig
from charrnn.corpus import Corpus
from charrnn.errors import CharrnnError, CheckpointError
from charrnn.model import CharRNN
from charrnn.train import Event, Trainer
from charrnn.vocab import Vocab

METRICS = "metrics.jsonl"


def prepare(directory: Path, force: bool) -> None:
    """Create the run directory; refuse to overwrite a run unless forced; make sure it is writable."""
    if any((directory / name).exists() for name in (BEST, LAST)) and not force:
        raise CharrnnError(f"{directory} already holds a run; choose another --run NAME, "
                           "or pass --force to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharrnnError(f"cannot create {directory}: {e.strerror}; choose another --out") from None
    if not os.access(directory, os.W_OK):
        raise CharrnnError(f"{directory} is not writable; choose another --out")
    checkpoint.clean_temp(directory)
    for name in (BEST, LAST, METRICS):
        (directory / name).unlink(missing_ok=True)


class Recorder:
    """Trainer listener: metrics.jsonl at every log and evaluation; checkpoints at every evaluation and the end."""

    def __init__(self, directory: Path, trainer: Trainer, corpus: Corpus):
        self.directory, self.trainer, self.corpus = directory, trainer, corpus
        self.saved_step = -1

    def __call__(self, event: Event) -> None:
        if event.kind in ("log", "eval"):
            row = {k: v for k, v in event.metrics.items() if k != "improved"}
            with open(self.directory / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if event.kind == "eval" and event.metrics["improved"]:
            self.save(BEST, full=False)
        if event.kind == "eval" or (event.kind == "end" and self.saved_step != self.trainer.progress.step):
            self.save(LAST, full=True)

    def meta(self) -> dict:
        t = self.trainer
        progress = dataclasses.asdict(t.progress)
        progress["best_val"] = progress["best_val"] if math.isfinite(progress["best_val"]) else None
        return {"model": dataclasses.asdict(t.model.cfg), "train": dataclasses.asdict(t.cfg),
                "vocab": self.corpus.vocab.chars, "progress": progress,
                "corpus": {"name": self.corpus.name, "fingerprint": self.corpus.fingerprint}}

    def save(self, name: str, full: bool) -> None:
        t, meta = self.trainer, self.meta()
        tensors = {f"model.{k}": v for k, v in t.model.state_dict().items()}
        if full:
            optim, meta["optim_groups"] = checkpoint.pack_optimizer(t.optimizer)
            tensors.update(optim)
            tensors.update({f"state.{i}": s for i, s in enumerate(t.state)})
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available() and t.device.type == "cuda":
                tensors["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        try:
            checkpoint.save(self.directory / name, tensors, meta)
        except OSError as e:
            raise CharrnnError(f"could not write {self.directory / name}: {e.strerror}; "
                               "the previous checkpoint is intact") from None
        self.saved_step = t.progress.step


def load_model(path: Path, device: torch.device) -> tuple[CharRNN, Vocab, dict]:
    """A checkpoint file's model (eval mode, on device), vocab and metadata."""
    tensors, meta = checkpoint.load(path)
    try:
        vocab = Vocab(meta["vocab"])
        model = CharRNN(ModelConfig(**meta["model"]))
        model.load_state_dict(checkpoint.split(tensors, "model"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is missing or has malformed entries ({type(e).__name__}); "
                              "it was not written by this charrnn") from None
    return model.to(device).eval(), vocab, meta
