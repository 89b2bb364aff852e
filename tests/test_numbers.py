"""Numbers far beyond a float's range, or too small to mean anything, are refused in one line before anything is
written or removed: flags, --config values and checkpoint metadata alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, cli
from test_metadata import RESUME, refusal, rewrite, run_dir, snapshot  # noqa: F401  (run_dir: a fixture)

HUGE = str(10**400)


def usage(result, fragment: str) -> None:
    """Exit 2, nothing on stdout, one `error:` line holding fragment, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and result.stdout == "" and len(lines) == 1, (result.exit_code, result.stderr)
    assert lines[0].startswith("error:") and fragment in lines[0], lines[0]


@pytest.mark.parametrize("flag, value, fragment", [
    ("--warmup-steps", HUGE, "--warmup-steps must be >= 0, not an integer of 1,329 bits"),
    ("--max-steps", HUGE, "--max-steps must be at least 1, not an integer of 1,329 bits"),
    ("--decay-steps", HUGE, "--decay-steps"),
    ("--log-every", HUGE, "--log-every"),
    ("--val-chars", HUGE, "--val-chars"),
    ("--val-frac", "1e-310", "--val-frac 1e-310 with --seq-len 16 holds out less than one validation window"),
])
def test_out_of_range_numbers_are_one_line_and_a_forced_run_stays(run_dir, flag, value, fragment):  # noqa: F811
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *TINY, "--max-steps", "4", flag, value, "--force")
    usage(result, fragment)
    assert snapshot(run_dir) == before  # --force removed nothing


def test_a_config_value_with_400_zeros_is_refused(run_dir):  # noqa: F811
    Path("c.toml").write_text(f"minutes = 1{'0' * 400}\n", encoding="utf-8")
    result = cli("train", "tiny.txt", *TINY, "--config", "c.toml", "--run", "other")
    usage(result, "c.toml: minutes must be a positive number, not an integer of 1,329 bits")


def test_metadata_with_huge_numbers_is_refused_by_every_reader(run_dir):  # noqa: F811
    rewrite(run_dir / "best.safetensors", Path("huge.safetensors"),
            lambda t, m: m["progress"].update(elapsed_s=10**400))
    for command in (["info", "huge.safetensors"], ["sample", "huge.safetensors", "-n", "3"],
                    ["score", "tiny.txt", "-c", "huge.safetensors"]):
        result = cli(*command)
        refusal(result.exit_code, result.stdout, result.stderr, "progress.elapsed_s")


def test_a_python_random_state_with_a_negative_word_is_refused_on_resume(run_dir):  # noqa: F811
    def negative(t, m):
        m["rng_python"][1][0] = -1

    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", negative)
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *RESUME)
    refusal(result.exit_code, result.stdout, result.stderr, "last.safetensors cannot be resumed from",
            only_line=False)
    assert snapshot(run_dir) == before


LONG = "x" * 300  # one path component longer than any file system takes


@pytest.mark.parametrize("args", [["info", LONG], ["plot", LONG], ["train", LONG, *TINY], ["sample", LONG],
                                  ["cells", "tiny.txt", "-c", LONG, "--unit", "0:0"], ["score", LONG],
                                  ["train", "tiny.txt", *TINY, "--run", LONG], ["train", "tiny.txt", *TINY, "--out",
                                                                               LONG], ["corpus", "get", "python",
                                                                                       "-o", LONG]])
def test_a_path_name_too_long_is_one_line_naming_it(run_dir, args):  # noqa: F811
    result = cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code in (1, 2) and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert LONG in lines[0] and "too long" in lines[0].lower(), lines[0]
    assert "stdout" not in lines[0]  # the path is to blame, not the output


def test_memory_is_estimated_before_the_run_is_replaced(run_dir, monkeypatch):  # noqa: F811
    import charrnn.device

    monkeypatch.setattr(charrnn.device, "available_memory", lambda device: 1000)  # a machine with 1 kB free
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *TINY, "--max-steps", "2", "--force")
    refusal(result.exit_code, result.stdout, result.stderr, "needs about", "more than the 0.0 GB available on cpu",
            "lower --batch-size or --seq-len", only_line=False)
    assert snapshot(run_dir) == before
