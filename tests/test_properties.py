"""Property tests that look for the next traceback: hypothesis generates flag values, mutated checkpoint metadata
and corpora of random bytes, and every case must end in a clean result or one error line, never a traceback."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metadata import rewrite

from charrnn.model import files


def cases(n: int) -> settings:
    """n examples a property, no deadline (a case runs the CLI), fixtures shared across examples on purpose."""
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def clean(result, allowed=(0, 1, 2)) -> list[str]:
    """No traceback; a documented exit code; a failure is exactly one `error:` line, the last on stderr."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in allowed, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code:
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return lines


# --- flag values -------------------------------------------------------------------------------------------

BAD_INTS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64, max_value=10**600))
BAD_FLOATS = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-0.5", "1e-320", "1e400", "-1e400"]),
                       st.floats(max_value=-1e-300).map(repr))
TEXTS = st.one_of(st.text(max_size=12), st.sampled_from(["", "\x1b[2J", "\udcff\udcfe", "a\x00b", "\u2028"]))
INT_FLAGS = {"train": ["--hidden-size", "--num-layers", "--embed-size", "--batch-size", "--seq-len",
                       "--warmup-steps", "--max-steps", "--log-every", "--eval-every", "--val-chars", "--seed",
                       "--decay-steps", "--save-every", "--min-char-count", "--threads"],
             "sample": ["-n", "--top-k", "--num-samples", "--seed", "--threads"],
             "cells": ["--top", "--max-chars", "--threads"], "score": ["--threads"], "info": ["--threads"]}
FLOAT_FLAGS = {"train": ["--dropout", "--lr", "--weight-decay", "--grad-clip", "--epochs", "--minutes", "--val-frac"],
               "sample": ["--temp", "--top-p"]}
TEXT_FLAGS = {"train": ["--cell", "--device", "--precision", "--encoding-errors"],
              "sample": ["--device", "--precision", "--separator", "--stop", "--prime"],
              "score": ["--device", "--precision", "--encoding-errors"], "cells": ["--state", "--find", "--unit"]}
FLAGS = [(c, f, "int") for c, fs in INT_FLAGS.items() for f in fs] + [
    (c, f, "float") for c, fs in FLOAT_FLAGS.items() for f in fs] + [(c, f, "text") for c, fs in TEXT_FLAGS.items()
                                                                      for f in fs]


def command(origin: Path, out: Path, name: str) -> list[str]:
    """A command that would succeed but for the flag under test."""
    model = str(origin / "checkpoints" / "tiny")
    return {"train": ["train", str(origin / "tiny.txt"), *TINY, "--max-steps", "1", "--out", str(out)],
            "sample": ["sample", model, "-n", "5"], "score": ["score", str(origin / "tiny.txt"), "-c", model],
            "info": ["info", model], "cells": ["cells", str(origin / "tiny.txt"), "-c", model, "--unit", "0:0",
                                               "--max-chars", "50"]}[name]


@cases(300)
@given(case=st.sampled_from(FLAGS), data=st.data())
def test_any_flag_value_is_a_result_or_one_line(origin, case, data):
    name, flag, kind = case
    value = data.draw({"int": BAD_INTS.map(str), "float": BAD_FLOATS, "text": TEXTS}[kind])
    out = Path(tempfile.mkdtemp()) / "runs"
    try:
        result = cli(*command(origin, out, name), flag, value)
        clean(result)
        if kind == "int" or value.lstrip("-") in ("nan", "inf", "1e400") or value.startswith("-"):
            assert result.exit_code == 2, (flag, value, result.stderr)  # out of every numeric flag's range
        if result.exit_code == 2:
            assert not out.exists()  # nothing written for a usage error
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# --- mutated checkpoint metadata ---------------------------------------------------------------------------

VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                   st.integers(min_value=2**64, max_value=10**500), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=40), st.sampled_from(["\x1b]0;t\x07", "\ud800", "x" * 5000]),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def paths(meta, prefix=()):
    """Every (path of keys) in the metadata, to a leaf or a container."""
    items = meta.items() if isinstance(meta, dict) else enumerate(meta) if isinstance(meta, list) else ()
    for key, value in items:
        yield (*prefix, key)
        if not isinstance(value, str) and len(prefix) < 3:
            yield from paths(value, (*prefix, key))


@pytest.fixture(scope="module")
def meta_paths(origin) -> list[tuple]:
    _, meta = files.load(origin / "checkpoints" / "tiny" / "last.safetensors")
    return [p for p in paths(meta) if p[0] not in ("format",) and not (p[0] == "vocab" and len(p) > 1 and p[1] > 3)]


def mutate(meta: dict, path: tuple, value, drop: bool) -> None:
    target = meta
    for key in path[:-1]:
        target = target[key]
    if drop and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value


@cases(120)
@given(data=st.data(), drop=st.booleans(), value=VALUES)
def test_mutated_metadata_is_refused_in_one_line_or_loads_correctly(origin, meta_paths, data, drop, value):
    path = data.draw(st.sampled_from(meta_paths))
    work = Path(tempfile.mkdtemp())
    try:
        shutil.copy(origin / "tiny.txt", work / "tiny.txt")
        shutil.copytree(origin / "checkpoints" / "tiny", work / "checkpoints" / "tiny")
        last = work / "checkpoints" / "tiny" / "last.safetensors"
        rewrite(last, last, lambda t, m: mutate(m, path, value, drop))
        for args in (["info", last], ["sample", last, "-n", "5"], ["score", work / "tiny.txt", "-c", last],
                     ["cells", work / "tiny.txt", "-c", last, "--unit", "0:0", "--max-chars", "20"],
                     ["train", work / "tiny.txt", *TINY, "--max-steps", "5", "--eval-every", "2", "--resume",
                      "--out", work / "checkpoints", "--run", "tiny"]):
            start = time.monotonic()
            result = cli(*args)
            clean(result, allowed=(0, 1, 2))
            if args[0] != "train":  # a resume may train, then fail for its own reasons (a huge --lr diverging)
                assert result.exit_code != 1 or time.monotonic() - start < 5, args  # refused fast, not after work
            if args[0] == "info" and result.exit_code == 0:
                assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- corpora of random bytes -------------------------------------------------------------------------------

PIECES = st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"\r\n", b"\xed\xa0\x80", b"\xc3", "é日🙂".encode(),
                          b"abc def\n"])
CORPORA = st.lists(st.one_of(PIECES, st.binary(max_size=30), st.text(max_size=30).map(
    lambda t: t.encode("utf-8", "surrogatepass"))), min_size=1, max_size=60).map(b"".join)


@cases(80)
@given(raw=CORPORA, repeat=st.integers(1, 60), errors=st.sampled_from(["strict", "replace", "skip"]))
def test_random_bytes_are_refused_cleanly_or_train_a_model_that_writes_only_their_characters(raw, repeat, errors):
    work = Path(tempfile.mkdtemp())
    try:
        corpus = work / "c.txt"
        corpus.write_bytes(raw * repeat)
        result = cli("train", corpus, *TINY, "--max-steps", "2", "--eval-every", "2", "--seq-len", "4",
                     "--batch-size", "2", "--encoding-errors", errors, "--out", work / "runs")
        clean(result, allowed=(0, 1, 2))
        if result.exit_code == 0:
            vocab = set(files.load(work / "runs" / "c" / "best.safetensors")[1]["vocab"])
            sample = cli("sample", work / "runs" / "c", "-n", "200", "--seed", "1")
            clean(sample, allowed=(0,))
            assert set(sample.stdout) <= vocab
    finally:
        shutil.rmtree(work, ignore_errors=True)
