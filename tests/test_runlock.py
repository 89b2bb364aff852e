"""One writer per run directory: a run still training is never taken over by a second train, --resume or --force;
a lock left by a killed run is taken over; the lock goes with the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import TINY, cli
from test_kill import Stderr, procs  # noqa: F401  (procs: a fixture that kills what a test started)

from charrnn.model import files

RUN = Path("checkpoints") / "busy"


def start(corpus: Path, *extra: str) -> tuple[subprocess.Popen, Stderr]:
    """A long run on busy, once it has logged its fifth step."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--run", "busy",
                             "--max-steps", "100000", "--log-every", "1", "--save-every", "2", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    err = Stderr(proc)
    err.wait_for(r"^step 5 \|")
    return proc, err


def refused(result, pid: int) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert "is in use by another charrnn run" in lines[0] and f"process {pid}@" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_second_writer_is_refused_while_a_run_trains(corpus, procs):  # noqa: F811
    proc, err = start(corpus)
    procs.append(proc)
    assert (RUN / ".lock").read_text().strip() == f"{proc.pid}@{socket.gethostname()}"
    metrics = (RUN / "metrics.jsonl").stat().st_size
    for extra in ([], ["--resume"], ["--force"], ["--resume", "--force"]):
        refused(cli("train", corpus, *TINY, "--run", "busy", "--max-steps", "3", *extra), proc.pid)
    assert proc.poll() is None  # still training, its files its own
    err.wait_for(r"^step 12 \|")
    assert (RUN / "metrics.jsonl").stat().st_size > metrics  # not cleared by the refused runs
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert not (RUN / ".lock").exists()  # freed with the run
    step = files.saved_step(RUN / "last.safetensors")  # where the signal stopped it (the step lines lag)
    assert cli("train", corpus, *TINY, "--run", "busy", "--max-steps", str(step + 3), "--resume").exit_code == 0


def test_a_lock_left_by_a_killed_run_is_taken_over(corpus, procs):  # noqa: F811
    proc, _ = start(corpus)
    procs.append(proc)
    proc.kill()  # SIGKILL: no chance to free anything
    proc.wait()
    assert (RUN / ".lock").exists()
    step = files.saved_step(RUN / "last.safetensors")
    result = cli("train", corpus, *TINY, "--run", "busy", "--max-steps", str(step + 3), "--resume")
    assert result.exit_code == 0, result.stderr
    assert not (RUN / ".lock").exists()


def test_a_refused_run_before_the_first_checkpoint_leaves_the_other_alone(corpus, procs):  # noqa: F811
    """Before any checkpoint (no best/last yet), a plain second train used to be accepted and clear metrics."""
    proc, err = start(corpus, "--save-every", "100000", "--eval-every", "100000")
    procs.append(proc)
    assert not (RUN / "last.safetensors").exists()
    refused(cli("train", corpus, *TINY, "--run", "busy", "--max-steps", "3"), proc.pid)
    err.wait_for(r"^step 8 \|")
    assert (RUN / "metrics.jsonl").read_text().count('"step"') >= 8  # every step still there
