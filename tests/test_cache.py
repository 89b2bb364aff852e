"""`charrnn cache`: listing OUT/.cache with the runs that use each entry, and --prune removing the unused ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from charrnn.atomic import HOST
from tests.conftest import cli, make_text, train_tiny

CACHE = Path("checkpoints/.cache")


@pytest.fixture
def two_runs(in_tmp: Path) -> Path:
    """checkpoints/a trained on a.txt, checkpoints/b on b.txt: two cache entries."""
    for name, seed in (("a", 1), ("b", 2)):
        (in_tmp / f"{name}.txt").write_text(make_text(6000, seed=seed), encoding="utf-8")
        train_tiny(in_tmp / f"{name}.txt", steps=3)
    return in_tmp


def rows(result) -> list[list[str]]:
    assert result.exit_code == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_lists_entries_with_their_runs(two_runs: Path):
    listed = rows(cli("cache"))
    assert len(listed) == 2 and all(len(row) == 5 for row in listed)
    assert sorted(row[3] for row in listed) == ["a", "b"]
    assert {row[4] for row in listed} == {str(two_runs / "a.txt"), str(two_runs / "b.txt")}
    assert all(float(row[1]) > 0 for row in listed)
    assert "2 entries" in cli("cache").stderr


def test_prune_removes_only_the_unused_entry(two_runs: Path):
    shutil.rmtree("checkpoints/b")
    listed = {row[4]: row for row in rows(cli("cache"))}
    assert listed[str(two_runs / "b.txt")][3] == "-" and listed[str(two_runs / "a.txt")][3] == "a"
    assert "1 used by no run" in cli("cache").stderr
    files = {p.name for p in CACHE.iterdir()}
    pruned = cli("cache", "--prune")
    assert pruned.exit_code == 0, pruned.stderr
    assert pruned.stdout == "" and "removed " in pruned.stderr and "b.txt" in pruned.stderr and "freed" in pruned.stderr
    left = rows(cli("cache"))
    assert [row[3] for row in left] == ["a"]
    assert {p.name for p in CACHE.iterdir()} == {n for n in files if n.startswith(left[0][0])}
    again = cli("cache", "--prune")
    assert again.exit_code == 0 and "removed " not in again.stderr
    resumed = train_tiny(two_runs / "a.txt", "--resume", steps=6)  # its entry is still there: reused
    assert "corpus cache reused" in resumed.stderr


def test_prune_skips_files_being_written_and_running_trains(two_runs: Path):
    shutil.rmtree("checkpoints/b")
    writing = [CACHE / f"0123456789abcdef0123~{os.getpid()}@{HOST}~x1.part", CACHE / "0123456789abcdef0123.ids"]
    for path in writing:  # an entry another process is writing: a temporary file, an ids file not yet published
        path.write_bytes(b"\0" * 10)
    assert len(rows(cli("cache"))) == 2
    lock = Path("checkpoints/a/.lock")
    lock.write_text(f"{os.getpid()}@{HOST}\n")  # a run training now: it may use an entry no checkpoint names yet
    held = cli("cache", "--prune")
    assert held.exit_code == 0 and "removed nothing" in held.stderr and len(rows(cli("cache"))) == 2
    lock.unlink()
    assert cli("cache", "--prune").exit_code == 0
    assert len(rows(cli("cache"))) == 1 and all(path.exists() for path in writing)


def test_nothing_cached_is_a_clean_message(in_tmp: Path):
    for args in ((), ("--prune",), ("--out", "nowhere"), ("--out", "nowhere", "--prune")):
        result = cli("cache", *args)
        assert result.exit_code == 0 and result.stdout == "" and "no corpus cache" in result.stderr


@pytest.mark.parametrize(("args", "named"), [(("--bogus",), "--bogus"), (("extra",), "extra"),
                                             (("--prune=yes",), "--prune"), (("--out",), "--out")])
def test_bad_flags_exit_2(args, named):
    result = cli("cache", *args)
    assert result.exit_code == 2 and named in result.stderr and result.stdout == ""
