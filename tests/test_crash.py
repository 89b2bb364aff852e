"""Disk full, unwritable output, non-finite training: clear errors, and the previous checkpoint stays intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, nan_losses, train_tiny

from charrnn import atomic
from charrnn.model import files as checkpoint
from charrnn.training.trainer import Trainer

LAST = Path("checkpoints/tiny/last.safetensors")


def test_disk_full_during_save_keeps_previous_checkpoint(corpus, monkeypatch):
    train_tiny(corpus, steps=3)
    before = LAST.read_bytes()
    real_fdopen = os.fdopen

    def to_dev_full(fd, mode, **kw):  # a checkpoint's bytes go to /dev/full: the kernel answers ENOSPC
        if mode != "wb":
            return real_fdopen(fd, mode, **kw)
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, **kw)

    monkeypatch.setattr(atomic.os, "fdopen", to_dev_full)
    result = cli("train", corpus, "--run", "tiny", "--resume", "--max-steps", "9", "--device", "cpu")
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert "the last good checkpoint is checkpoints/tiny/last.safetensors (step 3)" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert LAST.read_bytes() == before
    assert not list(LAST.parent.glob(".*.tmp"))
    assert checkpoint.load(LAST)[1]["progress"]["step"] == 3


def test_unwritable_output_directory_fails_before_training(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = cli("train", corpus, *TINY, "--out", blocker / "runs")
    assert result.exit_code == 1 and "cannot write to" in result.stderr and "--out" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_output_directory(corpus, tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    result = cli("train", corpus, *TINY, "--out", out)
    assert result.exit_code == 1 and "cannot write to" in result.stderr


def test_nonfinite_steps_are_skipped_then_training_stops(corpus, monkeypatch):
    """From step 4 every training loss is NaN (as in a diverged run): steps are skipped, then a clear error."""
    monkeypatch.setattr(Trainer, "step", nan_losses(lambda taken: taken >= 4))
    result = cli("train", corpus, *TINY, "--max-steps", "50", "--eval-every", "2")
    assert result.exit_code == 1
    assert "5 steps in a row had a non-finite loss" in result.stderr
    assert "the last good checkpoint is checkpoints/tiny/last.safetensors (step 8)" in result.stderr
    tensors, meta = checkpoint.load(LAST)
    assert meta["progress"]["step"] == 8 and meta["progress"]["skipped"] == 4  # steps 5-8 skipped; 9 stops it
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_one_nonfinite_step_is_skipped_and_counted(corpus, monkeypatch):
    step = Trainer.step

    def one_bad_batch(self):
        if self.progress.step == 2:
            saved = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.head.bias.data.fill_(float("inf"))
            loss = step(self)
            self.model.load_state_dict(saved)
            return loss
        return step(self)

    monkeypatch.setattr(Trainer, "step", one_bad_batch)
    train_tiny(corpus, steps=6)
    assert checkpoint.load(LAST)[1]["progress"]["skipped"] == 1
