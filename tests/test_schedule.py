"""The learning-rate schedule against hand-computed values: linear warmup, cosine decay to lr * min_lr_frac,
--decay-steps as the horizon, the clock-driven decay under --minutes; in lr_at, in the Trainer and in the
lr column of metrics.jsonl.

Numbers: --lr 0.01, default min_lr_frac 0.1, so after warmup lr = 0.001 + 0.0045 * (1 + cos(pi * done)), and
cos(k pi / 6) for k = 0..6 is 1, sqrt(3)/2, 1/2, 0, -1/2, -sqrt(3)/2, -1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli, make_text

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batches import Streams
from charrnn.model.rnn import CharRNN
from charrnn.training.trainer import Trainer, lr_at

# lr = 0.001 + 0.0045 * (1 + cos(k pi / 6)): the cosine at done = k/6
COS6 = [0.01, 0.009397114317029974, 0.00775, 0.0055, 0.00325, 0.0016028856829700263, 0.001]
# ... at done = 1/4 and 3/4: 0.001 + 0.0045 * (1 +- sqrt(2)/2)
QUARTER, THREE_QUARTERS = 0.008681980515339464, 0.0023180194846605358


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 0.01, "warmup_steps": 4, **kw})


def test_default_floor_is_a_tenth_of_lr():
    assert TrainConfig().min_lr_frac == 0.1  # the README's "cosine decay to 10% of --lr"


def test_warmup_is_linear_from_lr_over_warmup_to_lr():
    c = cfg()
    assert [lr_at(c, s, 10, 0.0) for s in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01], rel=1e-12)
    # the clock does not shorten the warmup
    assert lr_at(c, 1, 10, 0.9) == pytest.approx(0.005, rel=1e-12)


def test_cosine_decays_to_the_floor_at_the_horizon_and_stays_there():
    c = cfg()  # warmup 4, horizon 10: 6 decay steps, done = (step - 4) / 6
    assert [lr_at(c, s, 10, 0.0) for s in range(4, 11)] == pytest.approx(COS6, rel=1e-12)
    assert lr_at(c, 25, 10, 0.0) == pytest.approx(0.001, rel=1e-12)  # past the horizon: the floor
    floor = TrainConfig(lr=0.02, warmup_steps=0, min_lr_frac=0.25)
    assert lr_at(floor, 0, 8, 0.0) == pytest.approx(0.02, rel=1e-12)
    assert lr_at(floor, 4, 8, 0.0) == pytest.approx(0.02 * (0.25 + 0.75 * 0.5), rel=1e-12)
    assert lr_at(floor, 8, 8, 0.0) == pytest.approx(0.005, rel=1e-12)


def test_the_clock_drives_the_decay_without_a_step_horizon():
    c = cfg()
    for frac, expected in [(0.0, 0.01), (0.25, QUARTER), (0.5, 0.0055), (0.75, THREE_QUARTERS), (1.0, 0.001),
                           (1.7, 0.001)]:
        assert lr_at(c, 50, math.inf, frac) == pytest.approx(expected, rel=1e-12), frac


def test_step_and_clock_together_decay_by_whichever_is_further():
    c = cfg()  # horizon 10: step 7 is done = 3/6 = 0.5
    assert lr_at(c, 7, 10, 0.25) == pytest.approx(0.0055, rel=1e-12)
    assert lr_at(c, 7, 10, 0.75) == pytest.approx(THREE_QUARTERS, rel=1e-12)


# --- the Trainer: which horizon and which clock it gives lr_at ---------------------------------------------


def trainer(**kw) -> Trainer:
    """A trainer over 2 streams of 4 characters: 50 windows per epoch (401 ids -> L = 200)."""
    ids = np.arange(401, dtype=np.int64) % 5
    model = CharRNN(ModelConfig(vocab_size=5, embed_size=4, hidden_size=4, num_layers=1, dropout=0.0))
    config = cfg(batch_size=2, seq_len=4, **kw)
    train = Streams(ids, 2, 4)
    assert len(train) == 50
    return Trainer(model, config, train, Streams(ids[:41], 2, 4), torch.device("cpu"))


def lrs(t: Trainer, steps: int) -> list[float]:
    """The learning rate each of the next steps trained with."""
    out = []
    for _ in range(steps):
        t.step()
        out.append(t.optimizer.param_groups[0]["lr"])
    return out


def test_trainer_follows_max_steps():
    t = trainer(max_steps=10)
    assert lrs(t, 10) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, *COS6[:6]], rel=1e-12)


def test_trainer_decay_steps_is_the_horizon_not_the_budget():
    t = trainer(max_steps=6, decay_steps=16)  # horizon 16: 12 decay steps, so every 2 steps is k/6
    assert t.decay_steps == 16 and t.total_steps == 6
    got = lrs(t, 6)
    assert got[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01], rel=1e-12)
    assert got[4:] == pytest.approx([0.01, 0.001 + 0.0045 * (1 + math.cos(math.pi / 12))], rel=1e-12)
    t = trainer(max_steps=17, decay_steps=16)
    assert lrs(t, 17)[4::2] == pytest.approx(COS6, rel=1e-12)  # steps 4, 6, ..., 16: down to the floor


def test_trainer_epochs_budget_is_the_horizon():
    t = trainer(epochs=0.2)  # 0.2 x 50 windows = 10 steps
    assert t.total_steps == 10
    assert lrs(t, 10) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, *COS6[:6]], rel=1e-12)
    assert trainer(epochs=0.21).total_steps == 11  # a partial window counts as a step
    assert trainer(epochs=0.2, max_steps=7).total_steps == 7  # whichever budget is smaller


def test_trainer_minutes_alone_decays_on_the_clock():
    t = trainer(minutes=1.0, warmup_steps=2)
    t.eval_s = 0.0  # a validation that takes no time: the clock alone
    assert lrs(t, 2) == pytest.approx([0.005, 0.01], rel=1e-12)  # warmup whatever the clock says
    for elapsed, expected in [(0.0, 0.01), (15.0, QUARTER), (30.0, 0.0055), (45.0, THREE_QUARTERS),
                              (59.9, 0.001 + 0.0045 * (1 + math.cos(math.pi * 59.9 / 60)))]:
        t.progress.elapsed_s = elapsed
        assert lrs(t, 1) == pytest.approx([expected], rel=1e-12), elapsed


def test_trainer_minutes_with_max_steps_decays_by_whichever_is_further():
    t = trainer(minutes=1.0, max_steps=10)
    t.eval_s = 0.0
    lrs(t, 7)  # the next step is step 7: half-way through the 6 decay steps
    t.progress.elapsed_s = 15.0  # a quarter of the clock
    assert lrs(t, 1) == pytest.approx([0.0055], rel=1e-12)
    t.progress.elapsed_s = 45.0  # three quarters of the clock, ahead of the steps (8: done 4/6)
    assert lrs(t, 1) == pytest.approx([THREE_QUARTERS], rel=1e-12)


def test_trainer_decay_steps_ignores_the_clock():
    t = trainer(minutes=1.0, decay_steps=10)
    lrs(t, 7)
    t.progress.elapsed_s = 45.0
    assert lrs(t, 1) == pytest.approx([0.0055], rel=1e-12)  # step 7 of horizon 10, whatever the time


def test_trainer_leaves_the_final_validation_its_time_before_the_deadline():
    t = trainer(minutes=1.0, warmup_steps=0)
    t.eval_s = 15.0  # the last validation took 15 s: training gets 45 of the 60
    for elapsed, expected in [(0.0, 0.01), (22.5, 0.0055), (33.75, THREE_QUARTERS)]:
        t.progress.elapsed_s = elapsed
        assert lrs(t, 1) == pytest.approx([expected], rel=1e-12), elapsed
    t.progress.elapsed_s = 44.9
    assert not t.finished()
    t.progress.elapsed_s = 45.0  # annealed, and 15 s left for the final validation
    assert t.time_frac() == pytest.approx(1.0) and t.finished()


def test_trainer_estimates_the_first_validation_from_its_steps():
    t = trainer(minutes=1.0)
    assert t.eval_seconds() == 0.0  # nothing measured yet
    lrs(t, 4)
    t.progress.elapsed_s = 2.0  # 0.5 s a step; the split has 5 windows (+ a tail): 6 x 0.5 / 3 = 1 s
    assert len(t.val_streams) == 5 and t.eval_seconds() == pytest.approx(1.0)
    t.validate()
    assert 0 < t.eval_seconds() < 1  # measured from now on


# --- through the CLI: the lr column of metrics.jsonl -------------------------------------------------------


def log_rows(run: str) -> list[dict]:
    rows = [json.loads(r) for r in (Path("checkpoints") / run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "lr" in r]


def train(corpus: Path, run: str, *extra: str) -> None:
    result = cli("train", corpus, *TINY, "--lr", "0.01", "--log-every", "1", "--eval-every", "1000",
                 "--run", run, *extra)
    assert result.exit_code == 0, result.stderr


def test_cli_metrics_lr_with_max_steps(corpus):
    train(corpus, "steps", "--warmup-steps", "4", "--max-steps", "10")
    rows = log_rows("steps")
    assert [r["step"] for r in rows] == list(range(1, 11))
    # the row of step s holds the lr step s was trained with (the (s-1)-th update)
    assert [r["lr"] for r in rows] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, *COS6[:6]], rel=1e-9)


def test_cli_metrics_lr_with_decay_steps(corpus):
    train(corpus, "decay", "--warmup-steps", "3", "--decay-steps", "15", "--max-steps", "12")
    rows = log_rows("decay")
    assert [r["step"] for r in rows] == list(range(1, 13))
    expected = [0.01 / 3, 0.02 / 3, 0.01]  # warmup, then horizon 15 - 3 = 12: each 2 steps is k/6
    expected += [COS6[0], 0.001 + 0.0045 * (1 + math.cos(math.pi / 12)), COS6[1]]
    expected += [0.001 + 0.0045 * (1 + math.cos(math.pi * 3 / 12)), COS6[2]]
    expected += [0.001 + 0.0045 * (1 + math.cos(math.pi * 5 / 12)), COS6[3]]
    expected += [0.001 + 0.0045 * (1 + math.cos(math.pi * 7 / 12)), COS6[4]]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9)
    assert expected[6] == pytest.approx(QUARTER, rel=1e-12)  # row 7 (update 6) is a quarter of the way: cos(pi/4)


def test_cli_metrics_lr_with_epochs(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(make_text(1000), encoding="utf-8")  # 900 training characters: (899 // 4) // 16 = 14 windows
    train(path, "ep", "--warmup-steps", "2", "--epochs", "1")
    rows = log_rows("ep")
    assert [r["step"] for r in rows] == list(range(1, 15))  # one epoch is 14 steps
    # warmup 2, horizon 14: 12 decay steps, each 2 is k/6
    assert [r["lr"] for r in rows][0:2] == pytest.approx([0.005, 0.01], rel=1e-9)
    assert [r["lr"] for r in rows][2::2] == pytest.approx(COS6[:6], rel=1e-9)


def test_cli_metrics_lr_follows_the_clock_under_minutes(corpus):
    minutes = 0.02  # 1.2 s, the final validation's expected time included
    train(corpus, "clock", "--warmup-steps", "0", "--minutes", str(minutes))
    rows = [json.loads(r) for r in (Path("checkpoints") / "clock" / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in rows if "lr" in r]
    assert len(logs) >= 5, logs
    assert logs[0]["lr"] == pytest.approx(0.01, rel=1e-9)  # the clock had not started
    for before, row in zip(logs[:-1], logs[1:], strict=True):
        # step s trained with the lr of the time elapsed when step s - 1 ended, on a clock that runs a little
        # faster than the wall (the final validation's time is set aside): never behind the plain clock
        frac = before["elapsed_s"] / (minutes * 60)
        assert frac < 1
        assert row["lr"] <= 0.001 + 0.0045 * (1 + math.cos(math.pi * frac)) + 1e-12, (before, row)
    lr = [r["lr"] for r in logs]
    assert lr == sorted(lr, reverse=True) and lr[-1] < lr[0]  # the decay followed the clock down
    assert "val_loss" in rows[-1] and rows[-1]["step"] == logs[-1]["step"]  # it ended evaluated
