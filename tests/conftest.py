"""Shared fixtures: tiny generated corpora, a CLI runner, and a real-subprocess runner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from typer.testing import CliRunner

from charrnn.cli import app

# Property tests draw the same examples on every run, so CI cannot fail on a draw of its own; look for new ones
# with: pytest --hypothesis-profile explore
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

# The suite runs on 2 cores and tiny models gain nothing from more threads; a fixed count also keeps the in-process
# runs' numbers from following the machine's load (charrnn/cores.py). test_cores and test_shakespeare lift it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
# Used only with `train`. --device cpu: bit-identity and exact-resume tests must never land on a GPU by accident.
TINY = ["--hidden-size", "16", "--embed-size", "8", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16",
        "--device", "cpu"]


def make_text(n_chars: int, seed: int = 0, alphabet: str = "abcdefgh ijk\n") -> str:
    """Deterministic text with some structure (repeated words) so a model can learn it quickly."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(alphabet.strip() or alphabet) for _ in range(rng.randint(2, 6))) for _ in range(30)]
    out, size = [], 0
    while size < n_chars:
        w = rng.choice(words) + rng.choice(" \n")
        out.append(w)
        size += len(w)
    return "".join(out)[:n_chars]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory, so ./checkpoints is private to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A directory holding tiny.txt and checkpoints/tiny: one tiny run (4 steps, saved at steps 2 and 4),
    trained once per test module; tests copy it into their own directory."""
    root = tmp_path_factory.mktemp("origin")
    text = root / "tiny.txt"
    text.write_text(make_text(6000), encoding="utf-8")
    result = cli("train", text, *TINY, "--max-steps", "4", "--eval-every", "2", "--out", root / "checkpoints")
    assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr counts as a terminal, as for a person at a shell: informational lines are shown."""
    from charrnn.console import console

    monkeypatch.setattr(console, "_force_terminal", True)


def cli(*args: str, input: str | bytes | None = None):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def run_cli(*args: str, input: bytes | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `python -m charrnn ARGS` as a real process (bytes in, bytes out)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=env, **kw)


def train_tiny(corpus: Path, *extra: str, steps: int = 6):
    """Train a tiny model for a few steps through the CLI; asserts success."""
    result = cli("train", corpus, *TINY, "--max-steps", str(steps), "--eval-every", "3", *extra)
    assert result.exit_code == 0, result.stderr
    return result


def nan_losses(when):
    """A replacement for Trainer.step whose loss is NaN (as in a diverged run) at the steps for which
    when(steps already taken) is true; install it with monkeypatch.setattr(Trainer, "step", ...)."""
    from charrnn.training.trainer import Trainer

    step = Trainer.step

    def poisoned(self):
        if not when(self.progress.step):
            return step(self)
        forward = self.model.forward
        self.model.forward = lambda x, s: (lambda out: (out[0] * float("nan"), out[1]))(forward(x, s))
        try:
            return step(self)
        finally:
            del self.model.forward

    return poisoned
