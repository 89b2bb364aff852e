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


def test_without_matplotlib_a_figure_asked_for_is_an_error_after_the_text_curve(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = cli("plot", runs / "tiny", runs / "second", "-o", "loss.png")
    assert result.exit_code == 1
    assert "loss.png was not written" in result.stderr and "pip install 'charrnn[plot]'" in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("tiny   val") for line in lines), result.stderr
    assert any(line.startswith("second train") for line in lines), result.stderr
    assert not Path("loss.png").exists()


def test_without_matplotlib_and_without_o_the_text_curve_is_the_result(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = cli("plot", runs / "tiny")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and "error" not in result.stderr
    assert result.stderr.splitlines()[-1] == "for a figure (PNG, SVG or PDF) instead: pip install 'charrnn[plot]'"
    assert any(line.startswith("tiny val") for line in result.stderr.splitlines()), result.stderr
    assert not list(runs.glob("*/loss.png"))


def falling_run(name: str, points: int) -> Path:
    """checkpoints/NAME/metrics.jsonl with validation alone, falling evenly from 5.693 to 4.021 bits."""
    run = Path("checkpoints") / name
    run.mkdir(parents=True)
    bits = [5.693 - (5.693 - 4.021) * i / max(points - 1, 1) for i in range(points)]
    rows = [{"step": 100 * i, "elapsed_s": 6.0 * i, "val_loss": b * math.log(2)} for i, b in enumerate(bits, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


@pytest.mark.parametrize("points", [1, 2, 4, 22, 48, 49, 1000])
def test_the_text_curve_shows_the_whole_series_to_scale(points, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    falling_run("fall", points)
    result = cli("plot", "checkpoints/fall")
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("fall val"))
    name, kind, first, blocks, last, *_ = line.split()
    assert float(last) == pytest.approx(4.021 if points > 1 else 5.693, abs=1e-3) and float(first) == 5.693
    assert len(blocks) == min(points, 48)  # every point, up to 48 blocks across the whole run
    levels = [SPARKS.index(b) for b in blocks]
    assert levels == sorted(levels, reverse=True)  # falling, as the losses do
    if points > 1:
        assert levels[0] == len(SPARKS) - 1 and levels[-1] == 0  # highest first, lowest last: not all the maximum
    if points >= 8:
        assert set(levels) == set(range(len(SPARKS)))  # an even fall passes through every level


def test_the_text_curve_of_a_real_run_ends_at_its_last_point(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = cli("plot", runs / "second")
    curves = read(runs / "second")
    line = next(line for line in result.stderr.splitlines() if line.startswith("second train"))
    blocks = line.split()[3]
    low = min(p[2] for p in curves.train + curves.val)
    high = max(p[2] for p in curves.train + curves.val)
    assert blocks == spark([p[2] for p in curves.train], low, high, 48) and len(blocks) == len(curves.train) == 6


def test_summary_of_train_names_the_plot_command(origin):
    result = cli("train", origin / "tiny.txt", *TINY, "--max-steps", "2", "--run", "named")
    assert result.exit_code == 0, result.stderr
    assert "plot the losses: charrnn plot checkpoints/named" in result.stderr


@pytest.mark.parametrize(("args", "message", "code"), [
    (["-o", "loss.txt"], "give a .png, .svg or .pdf file name", 2),
    (["-o", "missing/loss.png"], "directory missing does not exist", 2),
    (["nowhere"], "nowhere: no such file or directory, and no checkpoints/nowhere", 1),
    (["no/where"], "no/where: no such file or directory; name a run", 1),
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
    assert spark([0.0, 1.0, 2.0, 3.0], 0.0, 3.0, 48) == SPARKS[0] + SPARKS[2] + SPARKS[5] + SPARKS[7]
    assert spark(list(range(100)), 0, 99, 10) == "▁▁▂▃▄▅▆▇██"  # points 0, 11, 22, ... 99: the whole series
    assert spark([2.0], 2.0, 2.0, 48) == SPARKS[0] and spark([], 0, 1, 48) == ""
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
