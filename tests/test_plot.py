"""charrnn plot: a figure of real runs' losses, several runs on one figure, the text curve without matplotlib,
and one-line errors for what cannot be plotted."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli

from charrnn.analysis.plot import SPARKS, read, spark, text

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(origin: Path, tmp_path: Path) -> Path:
    """Two runs under ./checkpoints: the module's tiny run and a second, longer one."""
    shutil.copytree(origin / "checkpoints", tmp_path / "checkpoints")
    result = cli("train", origin / "tiny.txt", *TINY, "--max-steps", "6", "--eval-every", "3", "--log-every", "1",
                 "--run", "second")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "checkpoints"


def test_plot_writes_a_png_of_a_run(runs):
    pytest.importorskip("matplotlib")
    result = cli("plot", runs / "tiny", "-o", "loss.png")
    assert result.exit_code == 0, result.stderr
    assert Path("loss.png").read_bytes().startswith(PNG)
    assert "wrote loss.png" in result.stderr
    assert not list(Path().glob(".loss.png*"))  # no temporary file left


def test_plot_default_is_the_newest_run_and_its_directory(runs):
    pytest.importorskip("matplotlib")
    result = cli("plot")
    assert result.exit_code == 0, result.stderr
    assert (runs / "second" / "loss.png").read_bytes().startswith(PNG)  # "second" was trained last
    assert not (runs / "tiny" / "loss.png").exists()


def test_plot_several_runs_on_one_figure_and_other_formats(runs):
    pytest.importorskip("matplotlib")
    assert cli("plot", runs / "tiny", runs / "second" / "last.safetensors", "-o", "both.png").exit_code == 0
    one = cli("plot", runs / "tiny", "-o", "one.png")
    assert one.exit_code == 0
    assert Path("both.png").read_bytes() != Path("one.png").read_bytes()  # the second run is drawn too
    svg = cli("plot", runs / "second", "-o", "loss.svg")
    assert svg.exit_code == 0 and Path("loss.svg").read_text().lstrip().startswith("<?xml")


def test_without_matplotlib_a_text_curve_and_how_to_install(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = cli("plot", runs / "tiny", runs / "second", "-o", "loss.png")
    assert result.exit_code == 1
    assert "pip install 'charrnn[plot]'" in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("tiny   val") for line in lines), result.stderr
    assert any(line.startswith("second train") for line in lines), result.stderr
    assert not Path("loss.png").exists()


def test_summary_of_train_names_the_plot_command(origin):
    result = cli("train", origin / "tiny.txt", *TINY, "--max-steps", "2", "--run", "named")
    assert result.exit_code == 0, result.stderr
    assert "plot the losses: charrnn plot checkpoints/named" in result.stderr


@pytest.mark.parametrize(("args", "message", "code"), [
    (["-o", "loss.txt"], "give a .png, .svg or .pdf file name", 2),
    (["-o", "missing/loss.png"], "directory missing does not exist", 2),
    (["nowhere"], "nowhere: no such file or directory", 1),
])
def test_plot_errors_are_one_line(runs, args, message, code):
    result = cli("plot", *args)
    assert result.exit_code == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_directory_without_runs_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("plot", tmp_path / "empty")
    assert result.exit_code == 1 and "no runs there" in result.stderr


def test_curves_are_read_in_bits_and_minutes(runs):
    curves = read(runs / "second")
    rows = [json.loads(r) for r in (runs / "second" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_loss" in r]
    assert [p[0] for p in curves.val] == [r["step"] for r in vals] == [3, 6]
    assert curves.val[0][2] == pytest.approx(vals[0]["val_loss"] / math.log(2))
    assert curves.train[0][1] == pytest.approx(rows[0]["elapsed_s"] / 60)
    assert [p[0] for p in curves.train] == list(range(1, 7))


def test_a_row_cut_short_is_skipped(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "elapsed_s": 6.0, "train_loss": 2.0}\n{"step": 2, "ela')
    curves = read(run)
    assert curves.train == [(1, 0.1, pytest.approx(2 / math.log(2)))] and curves.val == []


def test_spark_spans_low_to_high():
    assert spark([0.0, 1.0, 2.0, 3.0], 0.0, 3.0, 4) == SPARKS[0] + SPARKS[2] + SPARKS[5] + SPARKS[7]
    assert len(spark(list(range(100)), 0, 99, 10)) == 10
    assert "best" in text([read_fixed()])


def read_fixed():
    from charrnn.analysis.plot import Curves

    return Curves("x", train=[(1, 0.0, 3.0), (2, 0.1, 2.0)], val=[(2, 0.1, 2.5)])


def test_a_figure_that_cannot_be_written_is_one_line(runs):
    pytest.importorskip("matplotlib")
    Path("taken.png").mkdir()  # a directory where the file should go
    result = cli("plot", runs / "tiny", "-o", "taken.png")
    assert result.exit_code == 1 and result.stderr.startswith("error: cannot write taken.png"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(Path().glob(".taken.png*"))
