"""Real processes killed at random moments: the newest checkpoint always loads and resume continues."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, cli

from charrnn import checkpoint

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
EXPECTED_RC = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


def start_training(corpus: Path, run: str) -> subprocess.Popen:
    """A long run that saves every step, so kills land during writes as well as between them."""
    args = [sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--run", run,
            "--max-steps", "100000", "--save-every", "1", "--eval-every", "25", "--log-every", "5"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_at_random(proc: subprocess.Popen, last: Path, rng: random.Random, sig: int) -> bytes:
    deadline = time.monotonic() + 60
    while not last.exists():  # wait for the first checkpoint, then pick a moment
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.5))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return err


@pytest.mark.parametrize("i", range(12))
def test_kill_then_load_then_resume(corpus, i):
    rng = random.Random(i)
    sig = SIGNALS[i % 3]
    run = f"k{i}"
    last = Path("checkpoints") / run / "last.safetensors"
    proc = start_training(corpus, run)
    err = kill_at_random(proc, last, rng, sig)
    assert proc.returncode == EXPECTED_RC[sig], err.decode()
    assert b"Traceback" not in err
    if sig != signal.SIGKILL:
        assert b"--resume" in err.splitlines()[-1]  # the one-line message says how to resume
    step = checkpoint.load(last)[1]["progress"]["step"]
    assert step >= 1
    assert not list(last.parent.glob(".*.tmp")) or sig == signal.SIGKILL
    resumed = cli("train", corpus, "--run", run, "--resume", "--max-steps", str(step + 3))
    assert resumed.exit_code == 0, resumed.stderr
    assert not list(last.parent.glob(".*.tmp"))  # stale temporary files are cleaned at start
    assert checkpoint.load(last)[1]["progress"]["step"] == step + 3


def test_second_sigint_aborts_at_once_and_keeps_the_checkpoint(corpus):
    proc = start_training(corpus, "twice")
    last = Path("checkpoints/twice/last.safetensors")
    deadline = time.monotonic() + 60
    while not last.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err
    checkpoint.load(last)
