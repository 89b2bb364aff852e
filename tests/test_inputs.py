"""Inputs as real users give them: UTF-16 files, hidden files, a checkpoint given as a corpus, stray latin-1 bytes,
leftovers of killed runs, failed runs, and what training warns about."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, cli, make_text, train_tiny

from charrnn.atomic import HOST
from charrnn.model import files as checkpoint

TRAIN = [*TINY, "--max-steps", "2", "--eval-every", "2"]


def error_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def good(in_tmp) -> Path:
    path = in_tmp / "good.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    return path


@pytest.mark.parametrize("encoding, bom", [("utf-16", "FF FE"), ("utf-16-be", "FE FF"), ("utf-32", "FF FE 00 00")])
def test_a_utf16_or_utf32_file_is_named_with_the_iconv_command(in_tmp, good, encoding, bom):
    path = in_tmp / "wide.txt"
    text = make_text(6000)
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    kind = "UTF-32" if "32" in encoding else "UTF-16"
    line = error_line(cli("train", path, *TRAIN), 1)
    assert f"is {kind} text (byte-order mark {bom}), not UTF-8" in line, line
    assert f"iconv -f {kind} -t UTF-8" in line
    train_tiny(good)
    for command in (["score", path], ["sample", "--prime-file", path]):
        assert f"is {kind} text" in error_line(cli(*command), 1)


def test_a_directory_counts_hidden_binary_and_utf16_files_apart(in_tmp, good):
    tree = in_tmp / "tree"
    (tree / ".git").mkdir(parents=True)
    (tree / ".git" / "config").write_text("x")
    (tree / ".env").write_text("SECRET=1")
    (tree / "a.txt").write_bytes(good.read_bytes())
    (tree / "b.txt").write_bytes("hi".encode("utf-16"))
    (tree / "c.bin").write_bytes(b"\x00\x01")
    (tree / "d.bin").write_bytes(b"x\x00")
    result = cli("train", tree, *TRAIN)
    assert result.exit_code == 0, result.stderr
    assert "skipped 2 binary files, 1 UTF-16 file, 2 hidden files or directories" in result.stderr


@pytest.mark.parametrize("resume", [True, False])
def test_a_checkpoint_given_as_input_is_a_usage_error_with_the_resume_command(good, resume):
    train_tiny(good, "--out", "ck", "--run", "mine")
    before = (Path("ck/mine/last.safetensors")).read_bytes()
    args = ["train", *(["--resume"] if resume else []), "ck/mine/last.safetensors"]
    line = error_line(cli(*args), 2)
    assert "ck/mine/last.safetensors is a checkpoint, not text (--resume takes no argument)" in line
    assert line.endswith("charrnn train CORPUS --out ck --run mine --resume"), line
    assert Path("ck/mine/last.safetensors").read_bytes() == before
    assert sorted(p.name for p in Path("ck").iterdir()) == [".cache", "mine"]


def latin1_corpus(in_tmp: Path) -> Path:
    text = make_text(6000).encode()
    path = in_tmp / "src.c"
    path.write_bytes(text[:3000] + b"/* \xa9 2001 */\n" + text[3000:])
    return path


def test_a_stray_byte_is_refused_by_default_with_the_flag_to_use(in_tmp):
    path = latin1_corpus(in_tmp)
    line = error_line(cli("train", path, *TRAIN), 1)
    assert "byte 0xa9 at offset 3003" in line and "--encoding-errors replace" in line
    assert not (in_tmp / "checkpoints" / "src").exists()


@pytest.mark.parametrize("mode, added", [("replace", "\ufffd"), ("skip", "")])
def test_encoding_errors_replace_or_skip_report_count_and_first_place(in_tmp, mode, added):
    path = latin1_corpus(in_tmp)
    result = cli("train", path, *TRAIN, "--encoding-errors", mode)
    assert result.exit_code == 0, result.stderr
    done = "replaced with U+FFFD" if mode == "replace" else "skipped"
    report = f"1 invalid UTF-8 byte {done} (--encoding-errors {mode}); the first in {path} at byte offset 3003"
    assert report in result.stderr
    _, meta = checkpoint.load(in_tmp / "checkpoints" / "src" / "last.safetensors")
    assert ("\ufffd" in meta["vocab"]) == (mode == "replace") and meta["train"]["encoding_errors"] == mode
    text = make_text(6000)
    expected = text[:3000] + f"/* {added} 2001 */\n" + text[3000:]
    assert "corpus cache rebuilt" in result.stderr and f"({len(expected):,} characters" in result.stderr
    again = cli("train", path, *TRAIN, "--encoding-errors", mode, "--run", "again")
    assert "corpus cache reused" in again.stderr and report in again.stderr  # the count is kept with the cache


def test_the_encoding_choice_is_part_of_the_cache_key(in_tmp):
    path = latin1_corpus(in_tmp)
    cli("train", path, *TRAIN, "--encoding-errors", "replace", "--run", "r")
    skip = cli("train", path, *TRAIN, "--encoding-errors", "skip", "--run", "s")
    assert "corpus cache rebuilt (no cache yet)" in skip.stderr
    assert len(list((in_tmp / "checkpoints" / ".cache").glob("*.ids"))) == 2
    refused = cli("train", path, *TRAIN, "--encoding-errors", "skip", "--run", "r", "--resume")
    assert "--encoding-errors skip (the run has replace)" in error_line(refused, 2)


def test_score_takes_encoding_errors_too(in_tmp, good):
    train_tiny(good)
    path = latin1_corpus(in_tmp)
    assert "--encoding-errors replace" in error_line(cli("score", path), 1)
    for per_line in ([], ["--per-line"]):
        result = cli("score", path, "--encoding-errors", "skip", "--json", *per_line)
        assert result.exit_code == 0, result.stderr
        assert f"1 invalid UTF-8 byte skipped (--encoding-errors skip); the first in {path} at byte offset 3003" \
            in result.stderr


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(in_tmp, good):
    cache = in_tmp / "checkpoints" / ".cache"
    cache.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": cache / f"abc~{dead_pid()}@{HOST}~x1.part",
            "dead_spool": cache / f"stdin~{dead_pid()}@{HOST}~x2.part",
            "live": cache / f"abc~{sleeper.pid}@{HOST}~x3.part",
            "old_untagged": cache / "abc-1234.part",
            "new_untagged": cache / "stdin-5678.part",
            "dead_meta": cache / f".abc.json.~{dead_pid()}@{HOST}~x4.tmp",
            "old_other_host": cache / "abc~12@another-host~x5.part",
        }
        for path in files.values():
            path.write_bytes(b"partial")
        two_days_ago = time.time() - 2 * 24 * 3600
        for old in ("old_untagged", "old_other_host"):
            os.utime(files[old], (two_days_ago, two_days_ago))
        train_tiny(good)
        left = {name for name, path in files.items() if path.exists()}
        assert left == {"live", "new_untagged", "old_untagged"}  # a name without charrnn's tag is not charrnn's
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_preparation_leaves_no_partial_file(in_tmp, sig, code):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", "-", *TRAIN], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdin.write(make_text(5000).encode())
    proc.stdin.flush()
    cache = in_tmp / "checkpoints" / ".cache"
    deadline = time.monotonic() + 60
    while not list(cache.glob("stdin*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(cache.glob("stdin*.part")), "the spool never appeared"
    proc.send_signal(sig)  # while the spool waits for more of stdin
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"stopped by {sig.name} before training began; nothing saved" in stderr.decode()
    assert b"Traceback" not in stderr
    assert not list(cache.glob("*.part")) and not (in_tmp / "checkpoints" / "stdin").exists()


def test_a_failed_train_removes_the_directories_it_created(in_tmp):
    small = in_tmp / "small.txt"
    small.write_text("too short\n", encoding="utf-8")
    result = cli("train", small, *TRAIN, "--out", in_tmp / "new" / "ck")
    assert "need at least" in error_line(result, 1)
    assert not (in_tmp / "new").exists()
    (in_tmp / "ck").mkdir()
    (in_tmp / "ck" / "keep.txt").write_text("mine")
    error_line(cli("train", small, *TRAIN, "--out", in_tmp / "ck"), 1)
    assert sorted(p.name for p in (in_tmp / "ck").iterdir()) == [".cache", "keep.txt"]


def test_a_failed_forced_train_keeps_the_old_run(in_tmp, good):
    train_tiny(good)
    before = {p.name: p.read_bytes() for p in (in_tmp / "checkpoints" / "good").iterdir()}
    small = in_tmp / "small" / "good.txt"
    small.parent.mkdir()
    small.write_text("too short\n", encoding="utf-8")
    error_line(cli("train", small, *TRAIN, "--force"), 1)
    assert {p.name: p.read_bytes() for p in (in_tmp / "checkpoints" / "good").iterdir()} == before


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_follows_the_umask(in_tmp, good, mask, mode):
    proc = subprocess.run(["bash", "-c", f"umask {mask:03o} && {sys.executable} -m charrnn train {good} "
                           + " ".join(TRAIN)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (in_tmp / "checkpoints").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".ids", ".json", ".safetensors", ".jsonl"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


def test_a_single_character_corpus_trains_with_a_warning(in_tmp):
    path = in_tmp / "a.txt"
    path.write_text("a" * 6000, encoding="utf-8")
    result = cli("train", path, *TRAIN)
    assert result.exit_code == 0, result.stderr
    assert "warning: the corpus has a single distinct character ('a'): the model has nothing to learn" \
        in result.stderr
    assert cli("sample", "-n", "10").stdout == "a" * 10


def test_a_warmup_longer_than_the_budget_trains_with_a_warning(good):
    result = cli("train", good, *TINY, "--max-steps", "4", "--eval-every", "4", "--warmup-steps", "10")
    assert result.exit_code == 0, result.stderr
    assert "warning: --warmup-steps 10 is longer than the 4-step budget: the learning rate never reaches --lr" \
        in result.stderr
    quiet = cli("train", good, *TINY, "--max-steps", "4", "--warmup-steps", "4", "--run", "ok")
    assert "warning" not in quiet.stderr


def test_score_accounts_for_every_character(good):
    train_tiny(good)
    text = make_text(2000, seed=3)
    Path("t.txt").write_text(text + "ZZ€", encoding="utf-8")
    result = cli("score", "t.txt", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["chars"] == 2003 and report["oov"] == 3 and report["context"] == 1 and report["scored"] == 1999
    assert report["chars"] == report["scored"] + report["context"] + report["oov"]
    plain = cli("score", "t.txt").stdout
    assert "context        1" in plain and "scored         1999" in plain


def reference_loss(model, ids: torch.Tensor, batch_size: int, seq_len: int) -> float:
    """Validation loss computed independently: each of B' = min(B, (n-1)//T) contiguous streams read in one
    forward pass (what carrying the state window to window amounts to), the last stream running on to the end
    of the text, every character but the first predicted once."""
    n = len(ids)
    streams = max(1, min(batch_size, (n - 1) // seq_len))
    length = (n - 1) // streams
    total = 0.0
    with torch.no_grad():
        for b in range(streams):
            end = (b + 1) * length if b < streams - 1 else n - 1
            x, y = ids[b * length : end], ids[b * length + 1 : end + 1]
            logits, _ = model(x[None])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
    return total / (n - 1)


@pytest.mark.parametrize("n_val, batch, seq", [(613, 4, 16), (599, 4, 16), (450, 8, 50), (61, 8, 16)])
def test_validation_loss_matches_an_independent_reference(in_tmp, n_val, batch, seq):
    text = make_text(8000, seed=2)
    val_frac = n_val / len(text)
    path = in_tmp / "c.txt"
    path.write_text(text, encoding="utf-8")
    result = cli("train", path, *TINY, "--batch-size", str(batch), "--seq-len", str(seq), "--max-steps", "3",
                 "--eval-every", "3", "--val-frac", str(val_frac), "--precision", "fp32")  # the reference is fp32
    assert result.exit_code == 0, result.stderr
    model, vocab, meta = checkpoint.load_model(in_tmp / "checkpoints" / "c" / "last.safetensors", torch.device("cpu"))
    held_out = text[len(text) - int(len(text) * val_frac):]
    assert len(held_out) == n_val
    ids = torch.from_numpy(vocab.encode(held_out).astype("int64"))
    rows = [json.loads(r) for r in (in_tmp / "checkpoints" / "c" / "metrics.jsonl").read_text().splitlines()]
    reported = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    assert reported == pytest.approx(reference_loss(model, ids, batch, seq), rel=1e-5)
    Path("held.txt").write_text(held_out, encoding="utf-8")
    scored = json.loads(cli("score", "held.txt", "-c", "checkpoints/c/last.safetensors", "--json", "--precision",
                            "fp32").stdout)
    assert scored["nats_per_char"] == pytest.approx(reported, rel=1e-6) and scored["scored"] == n_val - 1
