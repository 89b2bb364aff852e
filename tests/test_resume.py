"""Exact resume: N steps + --resume + N steps == 2N uninterrupted steps, bit for bit; and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, make_text

from charrnn import checkpoint, run

STEPS = ["--eval-every", "4", "--log-every", "2"]


def last_tensors(name: str) -> dict[str, torch.Tensor]:
    return checkpoint.load(Path("checkpoints") / name / "last.safetensors")[0]


def train(corpus: Path, name: str, *extra: str):
    result = cli("train", corpus, *TINY, *STEPS, "--run", name, *extra)
    assert result.exit_code == 0, result.stderr
    return result


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def reference(corpus: Path) -> dict[str, torch.Tensor]:
    train(corpus, "ref", "--max-steps", "18")
    return last_tensors("ref")


@pytest.mark.parametrize("first", [9, 8])  # stop between evaluations, and exactly on one
def test_resume_is_bit_identical(corpus, reference, first):
    train(corpus, "split", "--max-steps", str(first), "--decay-steps", "18")
    assert not identical(last_tensors("split"), reference)
    result = train(corpus, "split", "--max-steps", "18", "--resume")
    assert f"resuming checkpoints/split at step {first}" in result.stderr
    tensors = last_tensors("split")
    assert any(k.startswith("optim.") for k in tensors) and any(k.startswith("state.") for k in tensors)
    assert identical(tensors, reference)  # weights, optimizer moments, hidden state and RNG alike


def drop_optimizer(trainer):
    trainer.optimizer.state.clear()


def drop_hidden_state(trainer):
    trainer.state = tuple(torch.zeros_like(s) for s in trainer.state)


def drop_rng(trainer):
    torch.manual_seed(0)


def drop_cursor(trainer):
    trainer.progress.window = 0


@pytest.mark.parametrize("forget", [drop_optimizer, drop_hidden_state, drop_rng, drop_cursor])
def test_negative_controls_a_missing_piece_of_state_is_caught(corpus, reference, forget, monkeypatch):
    restore = run.restore

    def forgetful(trainer, tensors, meta):
        restore(trainer, tensors, meta)
        forget(trainer)

    train(corpus, "split", "--max-steps", "9", "--decay-steps", "18")
    monkeypatch.setattr(run, "restore", forgetful)
    train(corpus, "split", "--max-steps", "18", "--resume")
    model = {k: v for k, v in last_tensors("split").items() if k.startswith("model.")}
    assert not identical(model, {k: v for k, v in reference.items() if k.startswith("model.")})


def test_resume_keeps_metrics_and_best(corpus):
    train(corpus, "m", "--max-steps", "8", "--decay-steps", "12")
    train(corpus, "m", "--max-steps", "12", "--resume")
    rows = (Path("checkpoints/m/metrics.jsonl")).read_text().splitlines()
    evals = [r for r in rows if "val_loss" in r]
    assert len(evals) == 3  # steps 4, 8, 12: the first run's rows are kept, the resumed run appends
    info = cli("info", "checkpoints/m/last.safetensors")
    assert "step 12" in info.stdout


def test_resume_refuses_a_different_corpus_unless_forced(corpus, tmp_path):
    train(corpus, "c", "--max-steps", "4")
    other = tmp_path / "other.txt"
    other.write_text(make_text(6000, seed=0)[::-1], encoding="utf-8")  # same characters, other text
    result = cli("train", other, "--run", "c", "--resume", "--max-steps", "8")
    assert result.exit_code == 1 and "not the corpus this run was trained on" in result.stderr
    assert "--force" in result.stderr
    forced = cli("train", other, "--run", "c", "--resume", "--max-steps", "8", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "step 8" in cli("info", "checkpoints/c/last.safetensors").stdout


def test_resume_refuses_different_model_flags(corpus):
    train(corpus, "f", "--max-steps", "4")
    result = cli("train", corpus, "--run", "f", "--resume", "--hidden-size", "32", "--cell", "gru")
    assert result.exit_code == 2
    assert "--hidden-size 32 (the run has 16)" in result.stderr and "--cell gru (the run has lstm)" in result.stderr


def test_resume_without_a_run_says_so(corpus):
    result = cli("train", corpus, "--run", "nothing", "--resume")
    assert result.exit_code == 1 and "nothing to resume" in result.stderr


def test_minutes_budget_counts_time_already_spent(corpus):
    train(corpus, "t", "--max-steps", "4")
    spent = checkpoint.load(Path("checkpoints/t/last.safetensors"))[1]["progress"]["elapsed_s"]
    assert spent > 0
    # a budget smaller than the time already spent: nothing left to train, and the user is told so
    result = cli("train", corpus, "--run", "t", "--resume", "--minutes", str(spent / 60 / 2))
    assert result.exit_code == 2 and "already reached its budget at step 4" in result.stderr
    assert checkpoint.load(Path("checkpoints/t/last.safetensors"))[1]["progress"]["step"] == 4


def test_a_new_budget_on_resume_replaces_the_old_one(corpus):
    train(corpus, "b", "--minutes", "0.002")  # a time budget, used up
    step = checkpoint.load(Path("checkpoints/b/last.safetensors"))[1]["progress"]["step"]
    train(corpus, "b", "--resume", "--max-steps", str(step + 5))  # a step budget now: the time budget is gone
    assert checkpoint.load(Path("checkpoints/b/last.safetensors"))[1]["progress"]["step"] == step + 5
    again = cli("train", corpus, "--run", "b", "--resume")
    assert again.exit_code == 2 and "--max-steps" in again.stderr


def test_resume_after_a_crash_drops_metrics_rows_past_the_checkpoint(corpus):
    train(corpus, "m2", "--max-steps", "8", "--decay-steps", "12")
    metrics = Path("checkpoints/m2/metrics.jsonl")
    with metrics.open("a") as f:  # rows a killed run logged after its last checkpoint, the last one cut short
        f.write('{"step": 10, "train_loss": 1.0}\n{"step": 12, "tra')
    train(corpus, "m2", "--max-steps", "12", "--resume")
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]  # every row parses
    assert [r["step"] for r in rows if "train_loss" in r] == [2, 4, 6, 8, 10, 12]  # each log step once
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 12]


def test_resume_with_force_on_a_shorter_corpus_starts_at_its_beginning(corpus, tmp_path):
    train(corpus, "s", "--max-steps", "60", "--decay-steps", "80")  # cursor well into the corpus
    short = tmp_path / "short.txt"
    short.write_text(corpus.read_text(encoding="utf-8")[:1500], encoding="utf-8")
    result = cli("train", short, "--run", "s", "--resume", "--force", "--max-steps", "64")
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(Path("checkpoints/s/last.safetensors"))[1]["progress"]["step"] == 64
