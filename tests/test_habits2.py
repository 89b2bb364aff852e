"""More of issue 23: every `train` flag that makes sense in a file is a --config key, messages that name what was
given, run names without control characters, the --min-char-count notice on a reused cache, singulars, and a
progress bar that fits 80 columns."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from conftest import TINY, cli, make_text, nan_losses, train_tiny


def one_error_line(result, code: int, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_a_config_file_sets_run_out_glob_and_threads_and_flags_override_it(in_tmp):
    (in_tmp / "data").mkdir()
    (in_tmp / "data" / "a.txt").write_text(make_text(6000), encoding="utf-8")
    distinct = len(set(make_text(6000)))
    (in_tmp / "data" / "b.dat").write_text("Z" * 100, encoding="utf-8")  # a character a.txt lacks
    (in_tmp / "c.toml").write_text('glob = "*.txt"\nout = "ck"\nrun = "fromfile"\nthreads = 1\n', encoding="utf-8")
    result = train_tiny(in_tmp / "data", "--config", "c.toml", steps=2)
    assert (in_tmp / "ck" / "fromfile" / "best.safetensors").is_file()
    assert ", 1 thread\n" in result.stderr and f", {distinct} distinct;" in result.stderr  # no Z: --glob from the file
    result = train_tiny(in_tmp / "data", "--config", "c.toml", "--run", "flag", "--out", "ck2", "--glob", "*",
                        steps=2)
    assert (in_tmp / "ck2" / "flag" / "best.safetensors").is_file() and not (in_tmp / "ck" / "flag").exists()
    assert f", {distinct + 1} distinct;" in result.stderr


@pytest.mark.parametrize("toml, says", [
    ("resume = true", "--config c.toml: resume cannot be set in a file: --resume is given on the command line"),
    ("force = true", "--config c.toml: force cannot be set in a file"),
    ('config = "other.toml"', "--config c.toml: config cannot be set in a file"),
    ("threads = 0", "--config c.toml: threads must be from 1 to 4096, not 0"),
    ("run = 3", "--config c.toml: run must be a string, not 3"),
    ('run = "a/b"', "--run 'a/b' is not a plain name"),
])
def test_a_config_file_refuses_per_invocation_flags_and_bad_places(corpus, in_tmp, toml, says):
    (in_tmp / "c.toml").write_text(toml + "\n", encoding="utf-8")
    one_error_line(cli("train", corpus, *TINY, "--config", "c.toml"), 2, says)
    assert not (in_tmp / "checkpoints").exists()


def test_an_unknown_device_is_named_as_unknown(corpus):
    train_tiny(corpus, steps=2)
    line = one_error_line(cli("sample", "--device", "tpu", "-n", "5"), 2)
    assert line == "error: --device tpu is not a device charrnn knows; use one of auto, cpu, cuda, mps"


def test_an_empty_corpus_is_named_as_given(in_tmp):
    line = one_error_line(cli("train", "/dev/null", *TINY), 1)
    assert line.startswith("error: /dev/null is empty;"), line
    (in_tmp / "sub").mkdir()
    (in_tmp / "sub" / "e.txt").write_bytes(b"")
    assert one_error_line(cli("train", "sub/e.txt", *TINY), 1).startswith("error: sub/e.txt is empty;")


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "bell\x07", "del\x7f"])
def test_a_run_name_with_a_control_character_is_refused(corpus, in_tmp, name):
    line = one_error_line(cli("train", corpus, *TINY, "--run", name), 2, "holds a control character", "--run")
    assert "\n" not in line and not (in_tmp / "checkpoints").exists()


def test_the_min_char_count_notice_shows_when_the_cache_is_reused(in_tmp):
    path = in_tmp / "rare.txt"
    path.write_text(make_text(6000) + "Q", encoding="utf-8")
    notice = "--min-char-count 2: 1 rare character (1 occurrence) maps to \ufffd"
    first = train_tiny(path, "--min-char-count", "2", steps=2)
    assert "corpus cache rebuilt" in first.stderr and notice in first.stderr
    again = train_tiny(path, "--min-char-count", "2", "--run", "again", steps=2)
    assert "corpus cache reused" in again.stderr and notice in again.stderr


def test_one_non_finite_step_reads_in_the_singular(corpus, in_tmp, monkeypatch):
    from charrnn.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "step", nan_losses(lambda step: step == 1))
    (in_tmp / "c.toml").write_text("max_nonfinite = 1\n", encoding="utf-8")
    result = cli("train", corpus, *TINY, "--max-steps", "4", "--config", "c.toml")
    assert result.exit_code == 1 and "1 step had a non-finite loss or gradient (last at step 1)" in result.stderr


def bar_line(monkeypatch, total_steps: float, step: int, val: float | None = None) -> str:
    """The progress bar as an 80-column terminal shows it after a log event at step (and an evaluation)."""
    from rich.console import Console

    import charrnn.console

    screen = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(charrnn.console, "console", screen)
    monkeypatch.setenv("TERM", "xterm-256color")
    report = charrnn.console.TrainReport(lambda: step / 2000, lambda: "sample", total_steps)
    assert report.bar is not None
    if val is not None:
        report(SimpleNamespace(kind="eval", metrics={"val_loss": val, "step": step, "improved": True}))
    report(SimpleNamespace(kind="log", metrics={"step": step, "train_loss": 1.23456, "epoch": 1.0, "lr": 1e-3,
                                                "chars_per_s": 12345.0}))
    report(SimpleNamespace(kind="end", metrics={}))
    out = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    out.print(report.bar.get_renderable())
    lines = out.file.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0].rstrip()


def test_the_progress_bar_fits_80_columns_with_step_loss_and_time_left(monkeypatch):
    line = bar_line(monkeypatch, 20000, 12345, val=1.5)
    assert len(line) <= 80 and "…" not in line, line
    assert re.fullmatch(r"step 12,345/20,000 .+ loss 1\.235 val 1\.500 +(\d+:\d\d:\d\d|-:--:--) left", line), line
    line = bar_line(monkeypatch, 6, 1)
    assert re.fullmatch(r"step 1/6 .+ loss 1\.235 val - +(\d+:\d\d:\d\d|-:--:--) left", line), line


def test_a_time_budget_bar_shows_the_step_alone(monkeypatch):
    line = bar_line(monkeypatch, float("inf"), 99)
    assert line.startswith("step 99 ") and len(line) <= 80 and line.endswith(" left"), line


def test_training_at_a_terminal_still_prints_the_plain_lines_elsewhere(corpus, terminal):
    result = train_tiny(corpus, "--log-every", "1", steps=3)  # CliRunner's stderr is no terminal for rich's Live
    assert "done: best val" in result.stderr
