"""A run's bare name (no directory in it) names checkpoints/NAME in every command that takes a run, unless a path of
that name exists; when neither does, the error names both places."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import cli, train_tiny


@pytest.fixture
def tiny(corpus: Path) -> Path:
    """checkpoints/tiny, trained in the test's directory."""
    train_tiny(corpus)
    return Path("checkpoints/tiny")


def test_sample_takes_a_run_name(tiny, terminal):
    by_name = cli("sample", "tiny", "-n", "40", "--seed", "3")
    assert by_name.exit_code == 0, by_name.stderr
    assert "sampling from checkpoints/tiny/best.safetensors" in by_name.stderr  # says which file it chose
    by_path = cli("sample", tiny, "-n", "40", "--seed", "3")
    assert by_name.stdout == by_path.stdout and len(by_name.stdout) >= 40
    assert cli("sample", "-c", "tiny", "-n", "40", "--seed", "3").stdout == by_path.stdout


def test_plot_takes_run_names(tiny, corpus, monkeypatch):
    train_tiny(corpus, "--run", "other")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the text curve: no figure needed
    result = cli("plot", "tiny", "other")
    assert result.exit_code == 0, result.stderr
    names = [line.split()[0] for line in result.stderr.splitlines() if " val " in line]
    assert names == ["tiny", "other"], result.stderr
    assert cli("plot", "-c", "tiny").exit_code == 0


def test_plot_a_run_name_to_a_figure(tiny):
    pytest.importorskip("matplotlib")
    result = cli("plot", "tiny")
    assert result.exit_code == 0, result.stderr
    assert f"wrote {tiny / 'loss.png'}" in result.stderr and (tiny / "loss.png").is_file()


def test_score_info_and_cells_take_a_run_name(tiny, corpus):
    score = cli("score", corpus, "-c", "tiny")
    assert score.exit_code == 0 and score.stdout == cli("score", corpus, "-c", tiny).stdout, score.stderr
    info = cli("info", "tiny")
    assert info.exit_code == 0 and "checkpoints/tiny/best.safetensors" in info.stdout, info.stderr
    cells = cli("cells", corpus, "-c", "tiny", "--unit", "0:0", "--max-chars", "5")
    assert cells.exit_code == 0 and len(cells.stdout.splitlines()) == 5, cells.stderr


@pytest.mark.parametrize("command", [["sample"], ["info"], ["score", "tiny.txt", "-c"],
                                     ["cells", "tiny.txt", "-u", "0:0", "-c"]])
def test_a_name_that_is_no_run_names_both_places(tiny, command):
    result = cli(*command, "nope")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: no checkpoint at nope, and no checkpoints/nope;"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_plot_a_name_that_is_no_run_names_both_places(tiny):
    result = cli("plot", "nope")
    assert result.exit_code == 1 and "nope: no such file or directory, and no checkpoints/nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_path_with_a_directory_is_not_looked_up(tiny):
    result = cli("sample", "x/tiny", "-n", "5")
    assert result.exit_code == 1 and "no checkpoint at x/tiny; " in result.stderr, result.stderr
    assert cli("plot", "x/tiny").exit_code == 1


def test_an_existing_path_wins_over_a_run_name(tiny):
    Path("tiny").mkdir()  # ./tiny: a directory with no checkpoint and no runs in it
    sample = cli("sample", "tiny", "-n", "5")
    assert sample.exit_code == 1 and "tiny holds no best.safetensors or last.safetensors" in sample.stderr
    plot = cli("plot", "tiny")
    assert plot.exit_code == 1 and "tiny: no runs there" in plot.stderr
