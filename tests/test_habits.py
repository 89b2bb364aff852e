"""Habits a new user brings (issue 23): choice names in any case, char-rnn's --temperature, bare commands, counts
that read right, `corpus get -o`, progress at a dumb terminal, and shell completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import cli, run_cli, train_tiny

import charrnn.data.corpora


def one_error_line(result, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_choice_names_are_taken_in_any_case(corpus, in_tmp):
    result = train_tiny(corpus, "--cell", "LSTM", "--precision", "FP32", "--encoding-errors", "Strict", steps=2)
    assert "; lstm 1x16," in result.stderr and "cpu, fp32," in result.stderr
    (in_tmp / "run.toml").write_text('cell = "GRU"\n', encoding="utf-8")
    result = train_tiny(corpus, "--config", "run.toml", "--run", "fromfile", steps=2)
    assert "; gru 1x16," in result.stderr
    one_error_line(cli("train", corpus, "--cell", "LSTMX"), "--cell must be one of lstm, gru, rnn", "'lstmx'")
    one_error_line(cli("train", corpus, "--precision", "FP16"), "--precision must be one of auto, fp32, bf16", "'fp16'")


def test_temperature_is_an_alias_of_temp(corpus):
    train_tiny(corpus, "--cell", "Gru")
    args = ["-n", "80", "--seed", "3", "--device", "CPU"]
    temp, temperature = cli("sample", *args, "--temp", "0.5"), cli("sample", *args, "--temperature", "0.5")
    assert temp.exit_code == temperature.exit_code == 0, temperature.stderr
    assert temp.stdout == temperature.stdout and len(temp.stdout) == 80


@pytest.mark.parametrize(("args", "usage"), [((), "Usage: charrnn [OPTIONS] COMMAND"),
                                             (("corpus",), "Usage: charrnn corpus [OPTIONS] COMMAND")])
def test_a_bare_command_shows_its_help_cleanly(args, usage):
    proc = run_cli(*args)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""  # as click does for no_args_is_help: help on stderr
    assert err.startswith(usage) and "error" not in err and "see charrnn" not in err and "\\n" not in err
    assert "Commands:" in err and err.endswith("\n")


def test_counts_and_times_read_right_for_one_and_under_a_second(corpus, in_tmp):
    result = train_tiny(corpus, "--threads", "1", steps=1)
    assert re.search(r", 1 thread\n", result.stderr), result.stderr
    assert re.search(r"; 1 step in \d+\.\d s;", result.stderr), result.stderr
    result = train_tiny(corpus, "--threads", "1", "--run", "two", steps=2)
    assert re.search(r"; 2 steps in \d+(\.\d)? s;", result.stderr), result.stderr
    (in_tmp / "one.txt").write_text("a", encoding="utf-8")
    result = cli("train", "one.txt", "--device", "cpu")
    assert result.exit_code == 1 and "the corpus has 1 character;" in result.stderr, result.stderr


@pytest.fixture
def small_python(in_tmp, monkeypatch) -> str:
    """The built-in `python` corpus made of one small file, so the test reads no whole standard library."""
    source = in_tmp / "src" / "mod.py"
    source.parent.mkdir()
    source.write_text("def f(x):\n    return x + 1\n", encoding="utf-8")
    monkeypatch.setattr(charrnn.data.corpora, "python_sources", lambda: [source])
    return source.read_text(encoding="utf-8")


def test_corpus_get_dash_writes_to_stdout(small_python, in_tmp):
    result = cli("corpus", "get", "python", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == small_python and result.stderr == ""
    assert not (in_tmp / "-").exists() and not (in_tmp / "corpora").exists()


def test_corpus_get_makes_no_directory_it_was_not_asked_for(small_python, in_tmp):
    target = in_tmp / "nonexist" / "dir" / "p.txt"
    one_error_line(cli("corpus", "get", "python", "-o", target), f"no directory {target.parent}", "create it")
    assert not (in_tmp / "nonexist").exists()
    assert cli("corpus", "get", "python").exit_code == 0  # the default ./corpora is charrnn's own to make
    assert (in_tmp / "corpora" / "python.txt").read_text(encoding="utf-8") == small_python
    (in_tmp / "there").mkdir()
    assert cli("corpus", "get", "python", "-o", "there/p.txt").exit_code == 0
    assert (in_tmp / "there" / "p.txt").read_text(encoding="utf-8") == small_python


def test_a_dumb_terminal_gets_the_plain_progress_lines(corpus, terminal, monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    result = train_tiny(corpus, "--log-every", "1", steps=3)
    assert re.search(r"^step 2 \| epoch [\d.]+ \| lr ", result.stderr, re.M), result.stderr


def complete(words: str) -> list[str]:
    """What bash completion offers for the line `words` (its last word being completed)."""
    env = {**os.environ, "_CHARRNN_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "charrnn"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_the_shell_completes_commands_and_choices():
    assert {"train", "sample", "score", "info", "cells", "plot", "corpus"} <= set(complete("charrnn "))
    assert complete("charrnn tr") == ["train"]
    assert complete("charrnn corpus ") == ["list", "get"]
    assert complete("charrnn train x.txt --cell ") == ["lstm", "gru", "rnn"]
    assert complete("charrnn train x.txt --cell l") == ["lstm"]
    assert complete("charrnn sample --device c") == ["cpu", "cuda"]
    help_text = run_cli("--help").stdout.decode()
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_completion_is_shown_and_installed_for_the_shell_named(tmp_path):
    """--show-completion bash and --install-completion bash (typer's own switch turns off detecting the shell)."""
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}

    def charrnn(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    shown = charrnn("--show-completion", "bash")
    assert shown.returncode == 0 and "_CHARRNN_COMPLETE=complete_bash" in shown.stdout, shown.stderr
    assert not (tmp_path / ".bashrc").exists()  # showing installs nothing
    installed = charrnn("--install-completion", "bash")
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "charrnn.sh"
    assert "_CHARRNN_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
