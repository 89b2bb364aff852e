"""Training under torchrun: 2 CPU processes (gloo) through the real launcher, checked against one process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, run_cli
from test_kill import Stderr

from charrnn.model import files as checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ARGS = [*TINY, "--eval-every", "4", "--log-every", "1", "--warmup-steps", "3", "--threads", "1",  # 4 streams: 2 each
        "--precision", "fp32"]  # two processes are compared with one to 1e-4: bf16 (auto on some CPUs) is coarser


def launch(*args: str, nproc: int = 2) -> list[str]:
    """The torchrun command line (--standalone: a free port, so runs never collide; `--`: torchrun takes --run
    for its own --run-path otherwise)."""
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "charrnn", "--", *map(str, args)]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(launch(*args, nproc=nproc), capture_output=True, timeout=300, env=ENV)


def trained(*args: str, nproc: int = 2) -> str:
    """Train under torchrun; asserts success; returns what the run said on stderr."""
    result = torchrun("train", *args, nproc=nproc)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def rows(run: str) -> list[dict]:
    return [json.loads(r) for r in (Path("checkpoints") / run / "metrics.jsonl").read_text().splitlines()]


def val_losses(run: str) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in rows(run) if "val_loss" in r}


def last(run: str) -> tuple[dict[str, torch.Tensor], dict]:
    return checkpoint.load(Path("checkpoints") / run / "last.safetensors")


def single(corpus: Path, run: str, *extra: str) -> None:
    result = cli("train", corpus, *ARGS, "--run", run, *extra)
    assert result.exit_code == 0, result.stderr


@contextlib.contextmanager
def long_run(corpus: Path, run: str, *extra: str, until_step: int):
    """A 2-process run with no step budget to speak of, from the moment it has logged until_step: (launcher, its
    stderr); the launcher is killed on the way out if it still runs."""
    proc = subprocess.Popen(launch("train", corpus, *ARGS, "--run", run, "--max-steps", "100000", *extra),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        err = Stderr(proc)
        err.wait_for(rf"^step {until_step} \|", timeout=120)
        yield proc, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_two_processes_train_as_one_with_the_same_batch_and_leave_an_ordinary_run(corpus):
    said = trained(corpus, *ARGS, "--run", "two", "--max-steps", "8")
    single(corpus, "one", "--max-steps", "8")
    two, one = val_losses("two"), val_losses("one")
    assert two.keys() == one.keys() == {4, 8}
    assert all(abs(two[s] - one[s]) < 1e-4 for s in one), (two, one)
    train_two, train_one = ([r["train_loss"] for r in rows(n) if "train_loss" in r] for n in ("two", "one"))
    assert train_two == pytest.approx(train_one, abs=1e-4)
    # One set of run files, written once: rank 0 alone wrote and spoke.
    assert sorted(p.name for p in Path("checkpoints/two").iterdir()) == ["best.safetensors", "last.safetensors",
                                                                         "metrics.jsonl"]
    assert sorted(p.name for p in Path("checkpoints").iterdir()) == [".cache", "one", "two"]
    assert [r["step"] for r in rows("two") if "train_loss" in r] == list(range(1, 9))
    assert said.count("done: best val") == 1 and "distributed: 2 processes (gloo), 2 of the 4 streams each" in said
    tensors, meta = last("two")
    reference = last("one")[0]
    assert tensors["state.0"].shape == reference["state.0"].shape == (1, 4, 16)  # every stream's carried state
    for k, v in reference.items():
        if k.startswith(("model.", "state.")):
            assert torch.allclose(tensors[k], v, atol=1e-5), k
    assert meta["progress"]["step"] == 8
    # An ordinary charrnn run: sampled and scored by one plain process.
    sample = run_cli("sample", "checkpoints/two", "-n", "50", "--seed", "1", "--device", "cpu")
    assert sample.returncode == 0 and len(sample.stdout.decode()) == 50, sample.stderr
    score = run_cli("score", corpus, "-c", "checkpoints/two", "--json", "--device", "cpu")
    assert score.returncode == 0 and json.loads(score.stdout)["bits_per_char"] > 0, score.stderr


def test_sigterm_to_torchrun_stops_every_process_at_one_step_and_resume_is_bit_identical(corpus):
    with long_run(corpus, "cut", "--decay-steps", "60", until_step=3) as (proc, err):
        proc.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to both processes
        proc.wait(timeout=60)
        text = err.rest()
    said = re.findall(r"^stopped by SIGTERM at step (\d+); saved (\S+)\. Resume with: (.+)$", text, re.M)
    assert len(said) == 1, text  # rank 0 alone speaks
    step, saved, again = int(said[0][0]), Path(said[0][1]), shlex.split(said[0][2])
    assert saved == Path("checkpoints/cut/last.safetensors") and last("cut")[1]["progress"]["step"] == step
    assert again[:6] == ["torchrun", "--nproc-per-node", "2", "-m", "charrnn", "--"] and again[-1] == "--resume"
    assert proc.stdout.read() == b""
    resumed = torchrun(*again[6:], "--max-steps", str(step + 5))
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"resuming checkpoints/cut at step {step}" in resumed.stderr.decode()

    trained(corpus, *ARGS, "--run", "whole", "--max-steps", str(step + 5), "--decay-steps", "60")
    a, b = last("cut")[0], last("whole")[0]
    assert a.keys() == b.keys() and {"rng.rank0.torch", "rng.rank1.torch", "state.0"} <= a.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_meet_through_the_rendezvous_and_train_as_one(corpus):
    """The multi-node form: two launchers (here on one machine, as two nodes of one process each) meet through
    c10d rendezvous; the run equals one process's, and only global rank 0 writes."""
    node = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}", "--rdzv-id", "charrnn-test", "-m", "charrnn", "--", "train", str(corpus),
            *ARGS, "--run", "nodes", "--max-steps", "8"]
    launchers = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV) for _ in range(2)]
    said = [p.communicate(timeout=300)[1].decode() for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], said
    assert sum(s.count("done: best val") for s in said) == 1
    single(corpus, "one", "--max-steps", "8")
    nodes, one = val_losses("nodes"), val_losses("one")
    assert nodes.keys() == one.keys() == {4, 8}
    assert all(abs(nodes[s] - one[s]) < 1e-4 for s in one), (nodes, one)


def test_a_changed_number_of_processes_re_shards_the_streams(corpus):
    """2 processes then 1 (a plain resume), and 1 then 2, each match one process throughout."""
    single(corpus, "one", "--max-steps", "8")
    trained(corpus, *ARGS, "--run", "down", "--max-steps", "4", "--decay-steps", "8")
    result = cli("train", corpus, "--run", "down", "--resume", "--max-steps", "8")
    assert result.exit_code == 0, result.stderr
    single(corpus, "up", "--max-steps", "4", "--decay-steps", "8")
    said = trained(corpus, "--run", "up", "--resume", "--max-steps", "8")
    assert "the run was trained by 1 process(es) and continues on 2: its 4 streams and their carried state are " \
           "split anew" in said
    for run in ("down", "up"):
        assert val_losses(run).keys() == {4, 8}
        assert val_losses(run)[8] == pytest.approx(val_losses("one")[8], abs=1e-4), run
        tensors, reference = last(run)[0], last("one")[0]
        assert all(torch.allclose(tensors[k], reference[k], atol=1e-5) for k in reference if k.startswith("model."))


def test_a_batch_the_processes_cannot_share_is_one_usage_error_before_anything_is_written(corpus):
    result = torchrun("train", corpus, *TINY, "--batch-size", "3", "--max-steps", "2")
    text = result.stderr.decode()
    assert result.returncode != 0
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert lines == ["error: --batch-size 3 cannot be split evenly over 2 processes; give a multiple of 2 (e.g. "
                     "--batch-size 4) or another --nproc-per-node"], text
    assert "exitcode  : 2" in text  # torchrun's own report names the usage error's code
    assert not Path("checkpoints").exists()


def pid_of_rank(launcher: int, rank: int) -> int:
    """The worker torchrun started as LOCAL_RANK rank."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker of rank {rank}")


def test_a_process_that_dies_ends_the_run_with_one_line_naming_the_last_checkpoint(corpus):
    with long_run(corpus, "dies", "--save-every", "2", until_step=5) as (proc, err):
        os.kill(pid_of_rank(proc.pid, 1), signal.SIGKILL)
        start = time.monotonic()
        proc.wait(timeout=120)  # no hang
        assert time.monotonic() - start < 60
        text = err.rest()
    assert proc.returncode != 0
    said = re.findall(r"^error: training stopped on rank 0 of 2: .*; the last good checkpoint is (\S+) \(step (\d+)\); "
                      r"resume with: torchrun --nproc-per-node 2 -m charrnn -- train .* --resume$", text, re.M)
    assert len(said) == 1, text
    assert Path(said[0][0]) == Path("checkpoints/dies/last.safetensors")
    assert last("dies")[1]["progress"]["step"] == int(said[0][1]) >= 4


def test_plain_training_never_loads_the_distributed_module(corpus):
    code = ("import sys; from charrnn.cli import app\n"
            "try: app()\n"
            "except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'charrnn.training.distributed' not in sys.modules; print('plain')")
    result = subprocess.run([sys.executable, "-c", code, "train", str(corpus), *TINY, "--max-steps", "2"],
                            capture_output=True, timeout=300, env=ENV)
    assert result.returncode == 0 and result.stdout == b"plain\n", result.stderr.decode()


def test_only_train_is_distributed_other_commands_ignore_torchruns_variables(corpus):
    """A charrnn called from inside a torchrun worker inherits RANK, WORLD_SIZE and LOCAL_RANK: sample, score and
    info ignore them and speak as usual."""
    env = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    missing = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-c", "missing"], capture_output=True,
                             env=env, timeout=60)
    assert missing.returncode == 1 and b"no checkpoint at missing" in missing.stderr


def test_an_error_before_the_group_forms_is_said_by_the_first_process_of_another_node(corpus):
    """Rank 1, the first process of a second node, meets a bad flag before the process group forms: it says so in
    one line, so a node is never silent (on rank 0's node rank 0 alone speaks: see the test above)."""
    env = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    bad = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), *ARGS, "--batch-size", "3"],
                         capture_output=True, env=env, timeout=60)
    lines = bad.stderr.decode().strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    assert "--batch-size 3 cannot be split evenly over 2 processes" in lines[0]
