"""--precision and --threads: chosen per device, printed, stored in the run, kept on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, train_tiny

from charrnn.device import native_bf16
from charrnn.model import files as checkpoint

NATIVE = native_bf16(torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(("cell", "hidden", "bf16"), [("lstm", 256, True), ("lstm", 16, False), ("gru", 16, False),
                                                      ("rnn", 16, False)])
def test_auto_precision_is_chosen_per_model_printed_and_stored(corpus, monkeypatch, native, cell, hidden, bf16):
    """Both answers of the hardware, faked; bf16 is real here only where the CPU has it (else the fake one trains
    an LSTM in fp32 after all: not run)."""
    import charrnn.device

    if native and bf16 and not NATIVE:
        pytest.skip("training in bf16 needs a CPU with avx512_bf16 or amx_bf16")
    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: native)
    result = train_tiny(corpus, "--threads", "1", "--cell", cell, "--hidden-size", str(hidden), steps=2)
    expected = "bf16" if native and bf16 else "fp32"
    assert f"parameters on cpu, {expected}, 1 thread\n" in result.stderr
    _, meta = checkpoint.load(Path("checkpoints/tiny/last.safetensors"))
    assert meta["train"]["precision"] == expected
    scored = cli("score", corpus, "--json", "--threads", "1")
    assert scored.exit_code == 0, scored.stderr


def test_auto_takes_bf16_only_where_measured_to_pay():
    """The rule itself, per device type, path, cell and size (device.BF16_FROM), the hardware's answer faked."""
    from charrnn.config import ModelConfig
    from charrnn.device import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    lstm, small = ModelConfig(cell="lstm", hidden_size=512), ModelConfig(cell="lstm", hidden_size=128)
    gru, rnn = ModelConfig(cell="gru", hidden_size=512), ModelConfig(cell="rnn", hidden_size=512)
    import charrnn.device

    with pytest.MonkeyPatch.context() as m:
        m.setattr(charrnn.device, "native_bf16", lambda device: True)
        assert [precision("auto", cpu, "train", c) for c in (lstm, small, gru, rnn, None)] == [
            "bf16", "fp32", "fp32", "fp32", "fp32"]
        assert precision("auto", cpu, "score", lstm) == "bf16"
        two56 = ModelConfig(cell="gru", hidden_size=256)  # the default: 2.25 MiB of recurrent matrices
        assert [precision("auto", cpu, "sample", c, rows) for c in (two56, rnn) for rows in (31, 32)] == [
            "fp32", "bf16", "fp32", "bf16"]  # bf16 weights from device.BF16_ROWS rows
        # at one row, bf16 weights once the recurrent matrices reach device.BF16_BYTES (4 MiB): LSTM 2x512 12 MiB,
        # GRU 2x512 9 MiB, LSTM 2x320 4.7 MiB; not the RNN 2x512 (3 MiB) nor a one-layer LSTM 511 (16 KiB short)
        assert [precision("auto", cpu, "sample", c) for c in (
            lstm, gru, ModelConfig(cell="lstm", hidden_size=320), rnn, ModelConfig(cell="lstm", hidden_size=511,
                                                                                 num_layers=1),
            ModelConfig(cell="lstm", hidden_size=512, num_layers=1))] == ["bf16", "bf16", "bf16", "fp32", "fp32",
                                                                          "bf16"]
        assert [precision("auto", cuda, "sample", c) for c in (lstm, gru, rnn)] == ["bf16", "bf16", "fp32"]
        assert precision("fp32", cpu, "train", lstm) == "fp32" and precision("bf16", cpu, "train", rnn) == "bf16"
        m.setattr(charrnn.device, "native_bf16", lambda device: False)  # never bf16 where it is emulated
        assert {precision("auto", d, p, c, rows) for d in (cpu, cuda) for p in ("train", "score", "sample")
                for c in (lstm, gru, rnn) for rows in (1, 64)} == {"fp32"}


def test_resume_keeps_the_runs_precision(corpus):
    train_tiny(corpus, "--precision", "fp32", steps=3)
    again = cli("train", corpus, *TINY, "--max-steps", "6", "--eval-every", "3", "--resume")
    assert again.exit_code == 0, again.stderr
    assert ", fp32, " in again.stderr
    if not NATIVE:  # auto resolves to fp32 here, the run's own: accepted
        assert cli("train", corpus, *TINY, "--max-steps", "8", "--resume", "--precision", "auto").exit_code == 0


@pytest.mark.skipif(NATIVE, reason="this CPU has native bf16")
def test_bf16_on_a_cpu_without_it_is_refused_before_anything_is_written(corpus, in_tmp):
    for args in (["train", corpus, *TINY, "--max-steps", "2", "--precision", "bf16"],
                 ["score", corpus, "--precision", "bf16"]):
        result = cli(*args)
        assert result.exit_code == 2 and "--precision bf16 on the CPU needs avx512_bf16 or amx_bf16" in result.stderr
    assert not (in_tmp / "checkpoints").exists()


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with avx512_bf16 or amx_bf16")
def test_bf16_trains_scores_and_samples(corpus):
    train_tiny(corpus, "--precision", "bf16")
    assert cli("score", corpus, "--precision", "bf16").exit_code == 0
    assert len(cli("sample", "-n", "20", "--precision", "bf16").stdout) == 20


@pytest.mark.parametrize("command", [["sample"], ["score", "x.txt"], ["info"], ["train", "x.txt"]])
def test_bad_threads_and_precision_are_usage_errors(command):
    assert "--threads must be from 1 to 4096, not 0" in cli(*command, "--threads", "0").stderr
    if command[0] != "info":
        result = cli(*command, "--precision", "fp16")
        assert result.exit_code == 2 and "--precision must be one of auto, fp32, bf16, not 'fp16'" in result.stderr


def test_threads_set_torchs_thread_count(corpus, monkeypatch):
    train_tiny(corpus)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    assert cli("sample", "-n", "5", "--threads", "1").exit_code == 0
    assert cli("score", corpus, "--threads", "3").exit_code == 0
    assert seen == [1, 3]


def test_a_resume_may_change_precision_and_says_so(corpus, monkeypatch):
    """A run trained in bf16 continues on a machine without native bf16 (faked here) in fp32, with a line that
    says so; --precision fp32 on resume is such a change too. Neither is refused."""
    import charrnn.device

    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: True)  # bf16 is allowed (and real here)
    train_tiny(corpus, "--precision", "bf16", steps=3)
    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: False)  # another machine
    again = cli("train", corpus, *TINY, "--max-steps", "5", "--eval-every", "3", "--resume")
    assert again.exit_code == 0, again.stderr
    assert "checkpoints/tiny trained in bf16; it continues in fp32 on cpu" in again.stderr
    assert ", fp32, " in again.stderr and checkpoint.load(Path("checkpoints/tiny/last.safetensors"))[1]["train"][
        "precision"] == "fp32"
    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: True)
    back = cli("train", corpus, *TINY, "--max-steps", "7", "--eval-every", "3", "--resume", "--precision", "bf16")
    assert back.exit_code == 0 and "trained in fp32; it continues in bf16" in back.stderr, back.stderr
    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: False)
    refused = cli("train", corpus, *TINY, "--max-steps", "9", "--resume", "--precision", "bf16")  # asked for
    assert refused.exit_code == 2 and "needs avx512_bf16 or amx_bf16" in refused.stderr


def test_cuda_bf16_counts_only_native_support(monkeypatch):
    """torch.cuda.is_bf16_supported() counts emulation unless told not to; auto must not pick emulated bf16."""
    from charrnn import device

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: asked.append(kw) or False)
    assert device.native_bf16(torch.device("cuda")) is False
    assert asked == [{"including_emulation": False}]


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_per_path_and_sampling_takes_the_fused_fp32_step(corpus, monkeypatch, native):
    """auto samples a small model on the CPU through the fused fp32 step (autocast per character is slower),
    whatever the hardware's answer (faked)."""
    import charrnn.device
    from charrnn.model.steps import FusedStep

    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: native)
    train_tiny(corpus, "--precision", "fp32")
    calls = []
    step = FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, ids: calls.append(1) or step(self, ids))
    result = cli("sample", "-n", "30", "--seed", "1")  # --precision auto
    assert result.exit_code == 0 and len(calls) == 29


def test_omp_num_threads_set_by_the_user_is_obeyed(corpus):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--max-steps", "1"],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0 and b", 1 thread\n" in proc.stderr, proc.stderr.decode()
