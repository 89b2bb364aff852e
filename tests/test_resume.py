"""Exact resume: N steps + --resume + N steps == 2N uninterrupted steps, bit for bit; and refusals."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, make_text

from charrnn.model import files as checkpoint
from charrnn.training.trainer import Trainer

STEPS = ["--eval-every", "4", "--log-every", "2"]
CPU = ["--device", "cpu"]  # every train invocation pins the CPU: bit-identity holds there


def last_tensors(name: str) -> dict[str, torch.Tensor]:
    return checkpoint.load(Path("checkpoints") / name / "last.safetensors")[0]


def last_meta(name: str) -> dict:
    return checkpoint.load(Path("checkpoints") / name / "last.safetensors")[1]


def model_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def train(corpus: Path, name: str, *extra: str):
    result = cli("train", corpus, *TINY, *STEPS, "--run", name, *extra)
    assert result.exit_code == 0, result.stderr
    return result


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


WARM = ["--warmup-steps", "3"]  # the stop falls in the cosine decay, past the warmup


@pytest.fixture
def reference(corpus: Path) -> dict[str, torch.Tensor]:
    train(corpus, "ref", "--max-steps", "18", *WARM)
    return last_tensors("ref")


@pytest.mark.parametrize("first", [9, 8])  # stop between evaluations, and exactly on one
def test_resume_is_bit_identical(corpus, reference, first):
    train(corpus, "split", "--max-steps", str(first), "--decay-steps", "18", *WARM)
    assert not identical(last_tensors("split"), reference)
    result = train(corpus, "split", "--max-steps", "18", "--resume")
    assert f"resuming checkpoints/split at step {first}" in result.stderr
    tensors = last_tensors("split")
    assert any(k.startswith("optim.") for k in tensors) and any(k.startswith("state.") for k in tensors)
    assert identical(tensors, reference)  # weights, optimizer moments, hidden state and RNG alike


WINDOWS = 14  # windows per epoch of the small corpus: 900 training characters, ((900 - 1) // 4) // 16 = 14


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A corpus of 1,000 characters: 100 held out, 900 to train on, so an epoch is WINDOWS steps."""
    path = tmp_path / "small.txt"
    path.write_text(make_text(1000, seed=5), encoding="utf-8")
    return path


@pytest.mark.parametrize("first", [10, 14])  # stop inside the first epoch, and exactly on its boundary
def test_resume_across_an_epoch_boundary_is_bit_identical(small, first):
    train(small, "ref", "--max-steps", "20", *WARM)
    reference = last_tensors("ref")
    assert last_meta("ref")["progress"]["epoch"] == 1  # the uninterrupted run crossed into epoch 2
    train(small, "split", "--max-steps", str(first), "--decay-steps", "20", *WARM)
    p = last_meta("split")["progress"]
    assert (p["epoch"], p["window"]) == ((0, first) if first < WINDOWS else (1, 0))
    assert not identical(model_of(last_tensors("split")), model_of(reference))
    train(small, "split", "--max-steps", "20", "--resume")
    p = last_meta("split")["progress"]
    assert (p["step"], p["epoch"], p["window"]) == (20, 1, 20 - WINDOWS)
    tensors = last_tensors("split")
    for name, value in model_of(reference).items():
        assert torch.equal(tensors[name], value), name
    assert identical(tensors, reference)  # optimizer moments, carried state and RNG too


def test_resume_with_an_epochs_budget_is_bit_identical(small):
    train(small, "ref", "--epochs", "2", *WARM)  # 28 steps; the cosine horizon is the budget
    reference = last_tensors("ref")
    assert last_meta("ref")["progress"]["step"] == 2 * WINDOWS
    train(small, "split", "--epochs", "0.5", "--decay-steps", str(2 * WINDOWS), *WARM)  # 7 steps
    assert last_meta("split")["progress"]["step"] == 7
    result = train(small, "split", "--epochs", "2", "--resume")
    assert "resuming checkpoints/split at step 7" in result.stderr
    p = last_meta("split")["progress"]
    assert (p["step"], p["epoch"], p["window"]) == (2 * WINDOWS, 2, 0)
    assert identical(last_tensors("split"), reference)


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
    restore = Trainer.load_state_dict

    def forgetful(trainer, sd):
        restore(trainer, sd)
        forget(trainer)

    train(corpus, "split", "--max-steps", "9", "--decay-steps", "18")
    monkeypatch.setattr(Trainer, "load_state_dict", forgetful)
    train(corpus, "split", "--max-steps", "18", "--resume")
    model = {k: v for k, v in last_tensors("split").items() if k.startswith("model.")}
    assert not identical(model, {k: v for k, v in reference.items() if k.startswith("model.")})


@pytest.fixture
def diverging(tmp_path: Path) -> Path:
    """Train on letters a-h, validate on i, j, k, space and newline: the more the model learns, the worse its
    validation loss, so the best evaluation is the first one and never the last."""
    path = tmp_path / "diverging.txt"
    path.write_text(make_text(5400, alphabet="abcdefgh") + make_text(600, seed=3, alphabet="ijk\n \n"),
                    encoding="utf-8")
    return path


def test_resume_keeps_metrics_and_best(diverging):
    lr = ["--lr", "0.03", "--warmup-steps", "1"]
    train(diverging, "m", "--max-steps", "8", "--decay-steps", "12", *lr)
    best_before = Path("checkpoints/m/best.safetensors").read_bytes()
    train(diverging, "m", "--max-steps", "12", "--resume")
    rows = [json.loads(r) for r in Path("checkpoints/m/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]  # the first run's rows are kept, the resumed run appends
    lowest = min(evals, key=lambda r: r["val_loss"])
    assert lowest["step"] == 4  # the premise: the best evaluation is not the last one (nor in the resumed part)

    last_t, last_m = checkpoint.load(Path("checkpoints/m/last.safetensors"))
    best_t, best_m = checkpoint.load(Path("checkpoints/m/best.safetensors"))
    assert last_m["progress"]["step"] == 12
    assert last_m["progress"]["best_step"] == lowest["step"] == best_m["progress"]["step"]
    assert math.isclose(last_m["progress"]["best_val"], lowest["val_loss"], rel_tol=1e-12)
    assert Path("checkpoints/m/best.safetensors").read_bytes() == best_before  # the resumed run kept it
    assert model_of(best_t).keys() == model_of(last_t).keys()
    assert not all(torch.equal(best_t[k], last_t[k]) for k in model_of(best_t))  # best is not last
    # best holds the weights of step 4 exactly: those of a run stopped there (same schedule)
    train(diverging, "four", "--max-steps", "4", "--decay-steps", "12", *lr)
    four = model_of(last_tensors("four"))
    assert all(torch.equal(best_t[k], four[k]) for k in four)
    info = cli("info", "checkpoints/m/last.safetensors")
    assert info.exit_code == 0, info.stderr
    lines = dict(line.split(maxsplit=1) for line in info.stdout.replace("best val", "best_val").splitlines())
    assert re.match(r"step 12, epoch [\d.]+, ", lines["progress"]), lines["progress"]
    assert lines["best_val"] == (f"{lowest['val_loss']:.4f} nats ({lowest['val_loss'] / math.log(2):.4f} "
                                 "bits/char) at step 4")


def test_resume_refuses_a_different_corpus_unless_forced(corpus, tmp_path):
    train(corpus, "c", "--max-steps", "4")
    other = tmp_path / "other.txt"
    other.write_text(make_text(6000, seed=0)[::-1], encoding="utf-8")  # same characters, other text
    result = cli("train", other, "--run", "c", "--resume", "--max-steps", "8", *CPU)
    assert result.exit_code == 1 and "not the corpus this run was trained on" in result.stderr
    assert "--force" in result.stderr
    forced = cli("train", other, "--run", "c", "--resume", "--max-steps", "8", "--force", *CPU)
    assert forced.exit_code == 0, forced.stderr
    assert "step 8" in cli("info", "checkpoints/c/last.safetensors").stdout


def test_resume_refuses_different_model_flags(corpus):
    train(corpus, "f", "--max-steps", "4")
    result = cli("train", corpus, "--run", "f", "--resume", "--hidden-size", "32", "--cell", "rnn", *CPU)
    assert result.exit_code == 2
    assert "--hidden-size 32 (the run has 16)" in result.stderr and "--cell rnn (the run has gru)" in result.stderr


def test_resume_without_a_run_says_so(corpus):
    result = cli("train", corpus, "--run", "nothing", "--resume", *CPU)
    assert result.exit_code == 1 and "nothing to resume" in result.stderr


def test_minutes_budget_counts_time_already_spent(corpus):
    train(corpus, "t", "--max-steps", "4")
    spent = checkpoint.load(Path("checkpoints/t/last.safetensors"))[1]["progress"]["elapsed_s"]
    assert spent > 0
    # a budget smaller than the time already spent: nothing left to train, and the user is told so
    result = cli("train", corpus, "--run", "t", "--resume", "--minutes", str(spent / 60 / 2), *CPU)
    assert result.exit_code == 2 and "already reached its budget at step 4" in result.stderr
    assert checkpoint.load(Path("checkpoints/t/last.safetensors"))[1]["progress"]["step"] == 4


def test_a_new_budget_on_resume_replaces_the_old_one(corpus):
    train(corpus, "b", "--minutes", "0.002")  # a time budget, used up
    step = checkpoint.load(Path("checkpoints/b/last.safetensors"))[1]["progress"]["step"]
    train(corpus, "b", "--resume", "--max-steps", str(step + 5))  # a step budget now: the time budget is gone
    assert checkpoint.load(Path("checkpoints/b/last.safetensors"))[1]["progress"]["step"] == step + 5
    again = cli("train", corpus, "--run", "b", "--resume", *CPU)
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
    result = cli("train", short, "--run", "s", "--resume", "--force", "--max-steps", "64", *CPU)
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(Path("checkpoints/s/last.safetensors"))[1]["progress"]["step"] == 64
