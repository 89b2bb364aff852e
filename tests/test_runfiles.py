"""The files of a run: metrics.jsonl is valid JSON even for non-finite losses, a write that fails is one line
naming the file and the last good checkpoint, and plot reads rows with NaN or null."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, nan_losses
from test_kill import Stderr, procs  # noqa: F401

from charrnn.training.trainer import Trainer


def one_line_error(result, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error:") and all(f in lines[-1] for f in fragments), lines[-1]
    return lines[-1]


def test_non_finite_losses_are_written_as_null_and_plotted_around(corpus, monkeypatch):
    monkeypatch.setattr(Trainer, "step", nan_losses(lambda taken: taken in (2, 3)))  # steps 3, 4: skipped
    result = cli("train", corpus, *TINY, "--max-steps", "8", "--log-every", "1", "--eval-every", "4")
    assert result.exit_code == 0, result.stderr
    text = Path("checkpoints/tiny/metrics.jsonl").read_text()
    rows = [json.loads(r, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) for r in text.splitlines()]
    assert [r["train_loss"] for r in rows if r["step"] in (3, 4) and "train_loss" in r] == [None, None]
    assert cli("plot", "checkpoints/tiny", "-o", "loss.png").exit_code == 0 and Path("loss.png").stat().st_size
    # a file from an older charrnn, with NaN and Infinity in it, plots too
    Path("checkpoints/tiny/metrics.jsonl").write_text(text.replace("null", "NaN", 1).replace("null", "Infinity"))
    result = cli("plot", "checkpoints/tiny", "-o", "old.png")
    assert result.exit_code == 0 and Path("old.png").stat().st_size, result.stderr


def test_a_directory_in_place_of_metrics_is_refused_before_training(corpus):
    Path("checkpoints/r/metrics.jsonl").mkdir(parents=True)
    one_line_error(cli("train", corpus, *TINY, "--run", "r", "--max-steps", "2"), "checkpoints/r/metrics.jsonl",
                   "in the way")
    assert cli("train", corpus, *TINY, "--run", "r", "--max-steps", "2", "--force").exit_code == 1  # still in the way


def test_a_metrics_write_that_fails_midway_names_the_file_and_the_last_checkpoint(corpus, procs):  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--max-steps", "100000",
                             "--log-every", "1", "--save-every", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    procs.append(proc)
    err = Stderr(proc)
    err.wait_for(r"^step 4 \|")
    metrics = Path("checkpoints/tiny/metrics.jsonl")
    metrics.unlink()
    metrics.mkdir()  # the next row cannot be appended
    assert proc.wait(timeout=60) == 1
    last = err.rest().strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoints/tiny/metrics.jsonl: Is a directory; the last good "
                           "checkpoint is checkpoints/tiny/last.safetensors (step "), last
    shutil.rmtree(metrics)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("command", ["cells", "plot", "corpus"])
def test_a_killed_writers_temporary_file_beside_a_named_output_is_removed(corpus, command):
    """--html, plot -o and corpus get write through a temporary file; one a killed writer left is removed by the
    next write of the same file, and nothing that lacks charrnn's tag is touched."""
    from charrnn.atomic import HOST

    assert cli("train", corpus, *TINY, "--max-steps", "2", "--eval-every", "2").exit_code == 0
    out = {"cells": "page.html", "plot": "loss.png", "corpus": "py.txt"}[command]
    dead, foreign = Path(f".{out}~{dead_pid()}@{HOST}~abc.tmp"), Path(f".{out}~mine.tmp")
    dead.write_bytes(b"half")
    foreign.write_bytes(b"not charrnn's")
    args = {"cells": ["cells", corpus, "-c", "checkpoints/tiny", "--unit", "0:0", "--html", out],
            "plot": ["plot", "checkpoints/tiny", "-o", out], "corpus": ["corpus", "get", "python", "-o", out]}
    result = cli(*args[command])
    assert result.exit_code == 0 and Path(out).stat().st_size, result.stderr
    assert not dead.exists() and foreign.exists()


def test_training_on_a_project_folder_skips_its_own_runs_and_names_a_changed_file(in_tmp):
    """`charrnn train .` twice: the second time the runs under . are not read as corpus text, so resume works;
    once a file of the corpus changes, the refusal names it."""
    project = in_tmp / "proj"
    (project / "src").mkdir(parents=True)
    for i, name in enumerate(["a.txt", "src/b.txt", "src/c.txt"]):
        (project / name).write_text(f"{name}: " + "hello world, abc def\n" * (120 + 10 * i), encoding="utf-8")
    os.chdir(project)
    first = cli("train", ".", *TINY, "--max-steps", "4", "--eval-every", "2", "--run", "p")
    assert first.exit_code == 0, first.stderr
    assert Path("checkpoints/p/metrics.jsonl").is_file()
    again = cli("train", ".", *TINY, "--max-steps", "6", "--eval-every", "2", "--run", "p", "--resume")
    assert again.exit_code == 0, again.stderr
    assert "1 charrnn output directory (--out or a run)" in again.stderr and "resuming" in again.stderr
    other = cli("train", ".", *TINY, "--max-steps", "2", "--run", "q", "--out", "elsewhere")
    assert other.exit_code == 0, other.stderr  # its own --out, and checkpoints/p: a run of another --out
    assert "2 charrnn output directories (--out or runs)" in other.stderr
    Path("src/b.txt").write_text("changed\n" * 300, encoding="utf-8")
    changed = cli("train", ".", *TINY, "--max-steps", "8", "--run", "p", "--resume")
    one_line_error(changed, "is not the corpus this run was trained on", "changed: src/b.txt")


def test_running_out_of_memory_midway_is_one_line_naming_the_last_checkpoint(corpus, monkeypatch):
    step = Trainer.step

    def allocation_fails(self):
        if self.progress.step == 5:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return step(self)

    monkeypatch.setattr(Trainer, "step", allocation_fails)
    result = cli("train", corpus, *TINY, "--max-steps", "20", "--eval-every", "4")
    one_line_error(result, "out of memory at step 6", "the last good checkpoint is checkpoints/tiny/last.safetensors "
                   "(step 4)", "lower --batch-size or --seq-len")
