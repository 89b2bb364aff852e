"""charrnn score through the CLI, with real tiny checkpoints: report, JSON, per line, stdin, edge cases."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, cli, make_text

from charrnn import device as devices
from charrnn.model import files as checkpoint

TEXT = make_text(6000)


def train(tmp: Path, *extra: str) -> Path:
    """Train a tiny model on TEXT through the CLI; returns the run directory."""
    (tmp / "c.txt").write_text(TEXT, encoding="utf-8")
    result = cli("train", tmp / "c.txt", *TINY, "--max-steps", "9", "--eval-every", "3", "--out", tmp / "runs",
                 *extra)
    assert result.exit_code == 0, result.stderr
    return tmp / "runs" / "c"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("score"))


def score(*args, input: str | bytes | None = None) -> dict:
    result = cli("score", *args, "--json", input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def val_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.mark.parametrize(("val_frac", "val_chars", "held"), [
    ("0.1", "0", 600),  # 600 validation characters: 4 streams
    ("0.01", "200000", 60),  # 60: only 3 fit; the default cap is far away
    ("0.5", "200", 200),  # the cap holds out the last 200 characters; the other 2,800 of the half train
])
def test_scoring_the_validation_split_gives_the_validation_loss(tmp_path, val_frac, val_chars, held):
    run = train(tmp_path, "--val-frac", val_frac, "--val-chars", val_chars)
    val_text = TEXT[len(TEXT) - held :]
    (tmp_path / "val.txt").write_text(val_text, encoding="utf-8")
    losses = val_losses(run)
    assert len(losses) == 3 and len(set(losses)) > 1
    best = score(tmp_path / "val.txt", "-c", run)  # the run directory means best.safetensors
    assert abs(best["nats_per_char"] - min(losses)) < 1e-3
    last = score(tmp_path / "val.txt", "-c", run / "last.safetensors")
    assert abs(last["nats_per_char"] - losses[-1]) < 1e-3
    assert best["chars"] == len(val_text) and best["oov"] == 0


def test_min_char_count_models_read_rare_characters_as_they_were_trained(tmp_path):
    """Rare characters became U+FFFD in training; score and prime read them the same way, not as unknown."""
    text = TEXT[:3000] + "\u00e9\u00e8" + TEXT[3000:]  # two rare characters, seen once each
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    result = cli("train", tmp_path / "c.txt", *TINY, "--max-steps", "6", "--eval-every", "3", "--min-char-count", "2",
                 "--val-frac", "0.5", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "runs" / "c"
    (tmp_path / "val.txt").write_text(text[len(text) - int(len(text) * 0.5) :], encoding="utf-8")
    report = score(tmp_path / "val.txt", "-c", run / "last.safetensors")
    assert report["oov"] == 0
    assert abs(report["nats_per_char"] - val_losses(run)[-1]) < 1e-3
    sampled = cli("sample", run, "--prime", "\u00e9x", "-n", "5", "--seed", "1")
    assert sampled.exit_code == 0 and "warning" not in sampled.stderr
    assert sampled.stdout.startswith("\u00e9x") and len(sampled.stdout) == 7


def test_report_fields_agree_and_text_matches_json(run_dir, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT[:2000], encoding="utf-8")
    data = score(tmp_path / "t.txt", "-c", run_dir)
    assert math.isclose(data["bits_per_char"], data["nats_per_char"] / math.log(2))
    assert math.isclose(data["perplexity"], math.exp(data["nats_per_char"]))
    assert data["chars"] == 2000 and data["scored"] == 1999 and data["context"] == 1  # all but the first
    result = cli("score", tmp_path / "t.txt", "-c", run_dir)
    assert result.exit_code == 0
    table = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert set(table) == {"bits_per_char", "nats_per_char", "perplexity", "chars", "scored", "context", "oov"}
    assert float(table["bits_per_char"]) == pytest.approx(data["bits_per_char"], abs=1e-4)
    assert int(table["chars"]) == 2000 and result.stderr == ""  # a file was named: nothing to say


def test_stdin_and_default_checkpoint(run_dir, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT[:1000], encoding="utf-8")
    named = score(tmp_path / "t.txt", "-c", run_dir)
    shutil.copytree(run_dir, tmp_path / "checkpoints" / "mine")
    assert score(input=TEXT[:1000]) == named  # FILE defaults to stdin, checkpoint to the newest run
    assert score("-", input=TEXT[:1000].encode()) == named


def test_characters_outside_the_vocabulary_are_counted_not_scored(run_dir):
    text = TEXT[:1000]
    dirty = text[:100] + "é" + text[100:500] + "日日" + text[500:]
    clean = score("-c", run_dir, input=text)
    result = cli("score", "-c", run_dir, "--json", input=dirty)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["oov"] == 3 and data["oov_chars"] == ["é", "日"] and data["chars"] == 1003
    assert data["nats_per_char"] == clean["nats_per_char"]  # excluded from the loss
    assert "3 character(s)" in result.stderr and "é日" in result.stderr
    table = cli("score", "-c", run_dir, input=dirty).stdout
    assert "oov            3\n" in table and "oov_chars      'é日'" in table


def test_per_line_keeps_order_and_scores_each_line_alone(run_dir):
    lines = TEXT[:600].splitlines()[:12]
    forward = cli("score", "-c", run_dir, "--per-line", input="\n".join(lines) + "\n")
    assert forward.exit_code == 0, forward.stderr
    rows = [row.split("\t", 1) for row in forward.stdout.splitlines()]
    assert [text for _, text in rows] == lines
    assert all(float(bits) > 0 for bits, _ in rows)
    backward = cli("score", "-c", run_dir, "--per-line", input="\n".join(reversed(lines)) + "\n")
    assert backward.stdout.splitlines() == list(reversed(forward.stdout.splitlines()))


def test_per_line_json_and_edge_lines(run_dir):
    text = "ab cd\n\nkéé\nab\né"  # an empty line, unknown characters, a last line of nothing known, unended
    result = cli("score", "-c", run_dir, "--per-line", "--json", input=text)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in rows] == ["ab cd", "", "kéé", "ab", "é"]
    assert [r["scored"] for r in rows] == [6, 1, 2, 3, 0]  # the newline counts; unknown characters do not
    assert all(isinstance(r["bits_per_char"], float) for r in rows[:4]) and rows[4]["bits_per_char"] is None
    assert "3 character(s)" in result.stderr and "'é'" in result.stderr


def line_bits(model, vocab, line: str) -> float:
    """Bits per character of line and its newline after a newline, straight from the model's logits."""
    ids = torch.from_numpy(vocab.encode("\n" + line + "\n").astype("int64"))  # (L + 2,)
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])  # (1, L + 1, V)
    return F.cross_entropy(logits[0].float(), ids[1:]).item() / math.log(2)


def test_per_line_output_sorts_numerically(run_dir, tmp_path):
    best = run_dir / "best.safetensors"
    model, vocab, _ = checkpoint.load_model(best, devices.pick("cpu"))
    lines, seen = [], set()
    for line in TEXT[:2000].splitlines():  # ten distinct lines whose scores differ at 4 decimals
        key = f"{line_bits(model, vocab, line):.4f}"
        if line and line not in lines and key not in seen:
            lines.append(line)
            seen.add(key)
    lines = lines[:10]
    assert len(lines) == 10
    expected = sorted(lines, key=lambda line: line_bits(model, vocab, line))
    assert expected != lines  # the input order is not already the sorted one
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = f"'{sys.executable}' -m charrnn score lines.txt -c '{best}' --per-line --precision fp32 | sort -n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "C"}  # sort -n reads '.' as the decimal point
    proc = subprocess.run(cmd, shell=True, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stderr == b""
    rows = [row.split("\t", 1) for row in proc.stdout.decode().splitlines()]
    assert [text for _, text in rows] == expected  # most predictable line first
    for (bits, text) in rows:
        assert float(bits) == pytest.approx(line_bits(model, vocab, text), abs=1e-4)


def test_per_line_streams_each_line_as_it_arrives(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "score", "-c", run_dir, "--per-line"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(120, proc.kill)  # a scorer that waits for the end of input would hang here
    watchdog.start()
    try:
        for line in ["ab cd", "kij a", "hh"]:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()  # stdin stays open: the answer must come before the input ends
            assert proc.stdout.readline().decode().endswith("\t" + line + "\n")
        proc.stdin.close()
        assert proc.wait() == 0
    finally:
        watchdog.cancel()


@pytest.mark.parametrize("payload, message", [
    (b"", "nothing to score"),
    (b"a", "nothing to score"),
    ("\u00e9\u00e9\u00e9".encode(), "nothing to score"),
    (b"ab \xff cd", "offset 3"),
    (b"ab\x00cd", "binary"),
])
def test_unscorable_text_is_a_one_line_error(run_dir, payload, message):
    for mode in ([], ["--per-line"]) if message in ("offset 3", "binary") else ([],):
        result = cli("score", "-c", run_dir / "best.safetensors", *mode, input=payload)
        assert result.exit_code == 1, result.stdout
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_file_and_checkpoint_are_errors(run_dir, tmp_path):
    result = cli("score", "nope.txt", "-c", run_dir)
    assert result.exit_code == 1 and "nope.txt" in result.stderr
    result = cli("score", "-c", tmp_path / "none.safetensors", input="ab")
    assert result.exit_code == 1 and "no checkpoint" in result.stderr
    result = cli("score", input="ab cd")  # no runs under ./checkpoints
    assert result.exit_code == 1 and "train one first" in result.stderr


def test_a_long_line_is_scored_in_chunks_with_the_state_carried(run_dir, monkeypatch):
    """A line of any length is scored in LINE_CHUNK pieces (bounded memory); chunks of 7 give what one pass gives
    (3,001 characters scored: the line and its newline, after a newline)."""
    import charrnn.analysis.score as scoring

    Path("long.txt").write_text(TEXT[:3000].replace("\n", " ") + "\n", encoding="utf-8")
    whole = cli("score", "long.txt", "-c", run_dir, "--per-line", "--json", "--precision", "fp32")
    monkeypatch.setattr(scoring, "LINE_CHUNK", 7)
    chunked = cli("score", "long.txt", "-c", run_dir, "--per-line", "--json", "--precision", "fp32")
    a, b = json.loads(whole.stdout), json.loads(chunked.stdout)
    assert a["scored"] == b["scored"] == 3001 and a["bits_per_char"] == pytest.approx(b["bits_per_char"], abs=1e-5)


def test_spooling_stdin_past_a_file_size_limit_is_one_line(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "charrnn", "train", "-", "--out", str(tmp_path / "c")],
                          input=b"abc\n" * 10000, capture_output=True, preexec_fn=limit, timeout=120)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr.decode()
    assert b"cannot keep stdin in" in proc.stderr and b"File too large" in proc.stderr


def test_several_files_give_a_row_each_and_a_total_weighted_by_characters(run_dir):
    Path("a.txt").write_text(TEXT[:1000], encoding="utf-8")
    Path("b.txt").write_text(TEXT[1000:1300] + "日", encoding="utf-8")
    alone = [score(name, "-c", run_dir) for name in ("a.txt", "b.txt")]
    result = cli("score", "a.txt", "b.txt", "-c", run_dir, "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.pop("file") for r in rows] == ["a.txt", "b.txt", None]  # null: the total over all files
    assert rows[:2] == alone  # each file scored on its own, as when given alone
    total = rows[2]
    assert total["scored"] == 999 + 299 and total["chars"] == 1301 and total["context"] == 2 and total["oov"] == 1
    assert total["oov_chars"] == ["日"] and "b.txt: 1 character(s)" in result.stderr
    mean = (alone[0]["nats_per_char"] * 999 + alone[1]["nats_per_char"] * 299) / 1298
    assert total["nats_per_char"] == pytest.approx(mean)
    table = cli("score", "a.txt", "b.txt", "-c", run_dir)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["bits_per_char", "nats_per_char", "perplexity", "chars", "scored", "oov", "file"]
    assert [line.split()[-1] for line in lines[1:]] == ["a.txt", "b.txt", "total"]
    assert float(lines[3].split()[0]) == pytest.approx(total["bits_per_char"], abs=1e-4)
    assert lines[3].split()[3:6] == ["1301", "1298", "1"]


def test_several_files_with_stdin_once_and_errors_naming_the_file(run_dir):
    Path("a.txt").write_text(TEXT[:500], encoding="utf-8")
    Path("short.txt").write_text("a", encoding="utf-8")
    result = cli("score", "a.txt", "-", "-c", run_dir, "--json", input=TEXT[:400])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in rows] == ["a.txt", "-", None] and rows[1]["chars"] == 400
    twice = cli("score", "-", "a.txt", "-", "-c", run_dir, input="ab cd")
    assert twice.exit_code == 2 and twice.stdout == "" and "stdin" in twice.stderr and "once" in twice.stderr
    assert len(twice.stderr.strip().splitlines()) == 1
    lines = cli("score", "a.txt", "a.txt", "-c", run_dir, "--per-line")
    assert lines.exit_code == 2 and "--per-line scores one FILE, not 2" in lines.stderr
    assert len(lines.stderr.strip().splitlines()) == 1 and "Traceback" not in lines.stderr
    short = cli("score", "a.txt", "short.txt", "-c", run_dir)
    assert short.exit_code == 1 and "short.txt: nothing to score" in short.stderr
    missing = cli("score", "a.txt", "nope.txt", "-c", run_dir)
    assert missing.exit_code == 1 and "nope.txt" in missing.stderr
