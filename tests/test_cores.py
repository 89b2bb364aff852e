"""Threads under shared cores (charrnn/cores.py): the choice with the machine's answer faked, when it adapts at
all, and a training run through the CLI that follows the probe."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, cli

from charrnn import cores, device

IDLE = (100e-6, 60e-6)  # (s per product with one thread, with all): all threads faster, as alone
LOADED = (100e-6, 8e-3)  # another busy process: every product with all threads waits out a time slice


class Faked(cores.Governor):
    """A governor whose probes answer from a script and whose clock is set by hand."""

    def __init__(self, most: int, answers: list[tuple[float, float]]):
        self.now = 0.0
        super().__init__(most, adapt=True, clock=lambda: self.now)
        self.answers = answers

    def probe(self):
        self.probes += 1
        return self.answers.pop(0)


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    cores.governor = cores.Governor(1, adapt=False)


def test_one_thread_as_soon_as_a_probe_finds_all_slower_and_all_again_only_after_two_agree():
    g = Faked(2, [IDLE, LOADED, IDLE, LOADED, IDLE, IDLE, IDLE])
    seen = []
    for _ in range(7):
        g.tick()
        seen.append(g.threads)
        g.now += cores.EVERY
    assert seen == [2, 1, 1, 1, 1, 2, 2]
    assert torch.get_num_threads() == 2


def test_probes_come_once_a_period_and_ticks_between_them_cost_nothing():
    g = Faked(2, [IDLE, IDLE])
    for _ in range(1000):
        g.tick()
    assert g.probes == 1
    g.now += cores.EVERY
    g.tick()
    assert g.probes == 2


def test_no_probe_without_adapting_or_with_a_single_core():
    for g in (cores.Governor(2, adapt=False), cores.Governor(1, adapt=True)):
        g.probe = None  # any probe would fail
        g.tick()
        assert not g.adapt


def test_a_real_probe_times_both_counts_and_leaves_the_current_one_set():
    g = cores.Governor(2, adapt=True)
    g.use(1)
    one, many = g.probe()
    assert 0 < one < 1 and 0 < many < 1 and math.isfinite(one + many)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("threads", "env", "adapts"), [
    (None, {}, True),  # the default count
    (2, {}, False),  # --threads
    (None, {"OMP_NUM_THREADS": "2"}, False),  # the user's environment
    (None, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, False),  # torchrun
])
def test_only_the_default_count_adapts(monkeypatch, threads, env, adapts):
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    for key in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert device.set_threads(threads) == 2
    assert cores.governor.adapt is adapts
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(("answer", "threads"), [(IDLE, 2), (LOADED, 1)])
def test_training_runs_with_the_count_the_probe_finds_faster(in_tmp, monkeypatch, answer, threads):
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores.Governor, "probe", lambda self: answer)
    (in_tmp / "t.txt").write_text("hello world\n" * 200, encoding="utf-8")
    result = cli("train", "t.txt", *TINY, "--max-steps", "3")
    assert result.exit_code == 0, result.stderr
    assert "2 threads, 1 while other processes load the cores" in result.stderr
    assert cores.governor.threads == threads and torch.get_num_threads() == threads


def test_a_given_count_is_said_plainly_and_never_probed(in_tmp, monkeypatch):
    monkeypatch.setattr(cores.Governor, "probe", None)  # any probe would fail
    (in_tmp / "t.txt").write_text("hello world\n" * 200, encoding="utf-8")
    result = cli("train", "t.txt", *TINY, "--max-steps", "3", "--threads", "2")
    assert result.exit_code == 0, result.stderr
    assert ", 2 threads\n" in result.stderr
