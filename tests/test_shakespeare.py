"""Integration: ~300 steps of the default model on tiny-shakespeare reach a validation loss below 2.0 nats.

Slow (about a minute on 2 CPU cores); skipped when ../shared/corpora/tinyshakespeare.txt is absent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SHAKESPEARE, cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent"),
]


@pytest.fixture
def all_cores(monkeypatch):
    """conftest pins torch to one thread for the tiny models; this test trains a real one, with the default
    count (adapting to the machine's load)."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(before)


def test_300_steps_of_the_default_model_reach_val_loss_below_2_nats(in_tmp, all_cores):
    result = cli("train", SHAKESPEARE, "--max-steps", "300", "--eval-every", "150", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    run_dir = in_tmp / "checkpoints" / "tinyshakespeare"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [150, 300]
    best = min(r["val_loss"] for r in evals)
    assert best < 2.0, f"best validation loss {best:.4f} nats after 300 steps"
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # still improving
    assert math.isclose(evals[-1]["val_bpc"], evals[-1]["val_loss"] / math.log(2), rel_tol=1e-9)

    sample = cli("sample", "-n", "300", "--temp", "0.8", "--prime", "ROMEO:", "--seed", "1")
    assert sample.exit_code == 0, sample.stderr
    assert len(sample.stdout) == len("ROMEO:") + 300
    assert sample.stdout.count(" ") > 20  # words, not noise
