"""The CLI as a user drives it: train -> sample -> info, files, flags, stdin, corpora."""

from __future__ import annotations

import json
import math
import os
import re
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, make_text, run_cli, train_tiny
from safetensors import safe_open

import charrnn
from charrnn.data import corpora
from charrnn.model import files as checkpoint

CELLS = ["lstm", "gru", "rnn"]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
LOG_KEYS = {"step", "epoch", "elapsed_s", "lr", "train_loss", "chars_per_s"}
EVAL_KEYS = {"step", "elapsed_s", "val_loss", "val_bpc"}
CJK_EMOJI = "日本語中文字東京😀🎉🐍🦀"


def meta_of(path: Path) -> dict:
    """A checkpoint's metadata, read through charrnn's own loader (which verifies the file)."""
    return checkpoint.load(path)[1]


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def info_fields(text: str) -> dict[str, str]:
    """`charrnn info`'s lines as {label: value}: "parameters   1,989" -> {"parameters": "1,989"}."""
    fields = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(best val|[a-z]+) {2,}(\S.*)", line)
        assert m, line
        fields[m[1]] = m[2]
    return fields


def best_line(evals: list[dict]) -> str:
    """The `best val` value info should print: the lowest validation loss, in nats and bits, and its step."""
    best = min(evals, key=lambda r: r["val_loss"])
    return f"{best['val_loss']:.4f} nats ({best['val_loss'] / math.log(2):.4f} bits/char) at step {best['step']}"


def n_params(cell: str, vocab: int, embed: int, hidden: int, layers: int) -> int:
    g = GATES[cell]
    rnn = g * (hidden * embed + hidden * hidden + 2 * hidden)
    rnn += (layers - 1) * g * (2 * hidden * hidden + 2 * hidden)
    return vocab * embed + rnn + hidden * vocab + vocab


def write_toml(path: Path, **values) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- train -> sample -> info, every cell -------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_train_sample_info_round_trip(cell, corpus, in_tmp):
    result = train_tiny(corpus, "--cell", cell)
    assert result.stdout == ""  # training reports on stderr only
    assert "error" not in result.stderr.lower()
    run_dir = in_tmp / "checkpoints" / "tiny"
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name

    out = cli("sample", "-n", "80", "--prime", "ab", "--seed", "7")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout) == 2 + 80
    assert out.stdout.startswith("ab")
    vocab = set(corpus.read_text(encoding="utf-8"))
    assert set(out.stdout) <= vocab

    info = cli("info")
    assert info.exit_code == 0, info.stderr
    fields = info_fields(info.stdout)
    assert fields["checkpoint"] == str(Path("checkpoints") / "tiny" / "best.safetensors")
    assert re.fullmatch(rf"{cell}, 1 layers? x 16 units, embed 8, dropout 0\.0", fields["model"]), fields["model"]
    assert fields["parameters"] == f"{n_params(cell, len(vocab), 8, 16, 1):,}"
    assert fields["vocabulary"].startswith(f"{len(vocab)} characters: ")
    assert re.match(r"step 6, epoch [\d.]+, ", fields["progress"]), fields["progress"]
    assert fields["best val"] == best_line([r for r in metrics(run_dir) if "val_loss" in r])


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_records_the_model_config(cell, corpus, in_tmp):
    train_tiny(corpus, "--cell", cell, "--dropout", "0.25")
    m = meta_of(in_tmp / "checkpoints" / "tiny" / "best.safetensors")
    assert m["model"]["cell"] == cell
    assert (m["model"]["hidden_size"], m["model"]["embed_size"], m["model"]["num_layers"]) == (16, 8, 1)
    assert m["model"]["dropout"] == 0.25


# --- sample: length, streams, seeds ------------------------------------------------------------------------


@pytest.mark.parametrize(("prime", "n"), [("", 1), ("", 123), ("abc d", 40), ("a\nb", 7), ("ab", 1)])
def test_sample_stdout_is_exactly_prime_plus_n_characters(prime, n, corpus):
    train_tiny(corpus)
    out = cli("sample", "-n", str(n), "--prime", prime, "--seed", "1")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout) == len(prime) + n
    assert out.stdout[: len(prime)] == prime


def test_sample_stdout_carries_nothing_but_the_text(corpus, monkeypatch):
    train_tiny(corpus)
    out = cli("sample", "-n", "60", "--seed", "2")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout) == 60 and out.stderr == ""  # in a script: the text, and silence on stderr
    from charrnn.console import console

    monkeypatch.setattr(console, "_force_terminal", True)
    at_terminal = cli("sample", "-n", "60", "--seed", "2")
    assert at_terminal.stdout == out.stdout
    assert at_terminal.stderr == "sampling from checkpoints/tiny/best.safetensors\n"  # which file: on stderr


def test_same_seed_same_text_different_seed_different_text(corpus):
    train_tiny(corpus)
    a = cli("sample", "-n", "200", "--seed", "11")
    b = cli("sample", "-n", "200", "--seed", "11")
    c = cli("sample", "-n", "200", "--seed", "12")
    assert a.exit_code == b.exit_code == c.exit_code == 0
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_temperature_zero_is_argmax_whatever_the_seed(corpus):
    train_tiny(corpus)
    a = cli("sample", "-n", "100", "--temp", "0", "--seed", "1")
    b = cli("sample", "-n", "100", "-t", "0", "--seed", "2")
    assert a.exit_code == b.exit_code == 0
    assert a.stdout == b.stdout and len(a.stdout) == 100


def test_short_options(corpus):
    train_tiny(corpus)
    out = cli("sample", "-n", "30", "-p", "ba", "-t", "0.5", "--seed", "3")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout) == 32 and out.stdout.startswith("ba")


def test_sample_without_checkpoint_uses_newest_run_and_says_so(in_tmp, terminal):
    text = make_text(4000)
    (in_tmp / "first.txt").write_text(text, encoding="utf-8")
    (in_tmp / "second.txt").write_text(text, encoding="utf-8")
    train_tiny(in_tmp / "first.txt")
    train_tiny(in_tmp / "second.txt")
    out = cli("sample", "-n", "5", "--seed", "1")
    assert out.exit_code == 0, out.stderr
    assert str(Path("checkpoints") / "second") in out.stderr
    assert "first" not in out.stderr
    # make "first" the newest by modification time: now it is chosen
    future = (in_tmp / "checkpoints" / "second" / "best.safetensors").stat().st_mtime + 100
    for f in (in_tmp / "checkpoints" / "first").iterdir():
        os.utime(f, (future, future))
    out = cli("sample", "-n", "5", "--seed", "1")
    assert out.exit_code == 0, out.stderr
    assert str(Path("checkpoints") / "first") in out.stderr
    assert "second" not in out.stderr


def test_sample_accepts_a_run_directory_or_a_file(corpus, in_tmp, terminal):
    train_tiny(corpus)
    run_dir = in_tmp / "checkpoints" / "tiny"
    by_dir = cli("sample", run_dir, "-n", "50", "--seed", "4")
    by_best = cli("sample", run_dir / "best.safetensors", "-n", "50", "--seed", "4")
    by_last = cli("sample", run_dir / "last.safetensors", "-n", "50", "--seed", "4")
    for r in (by_dir, by_best, by_last):
        assert r.exit_code == 0, r.stderr
        assert len(r.stdout) == 50
    assert by_dir.stdout == by_best.stdout  # a run directory means its best weights
    assert "best.safetensors" in by_dir.stderr  # a directory was resolved to a file: say which
    (run_dir / "best.safetensors").unlink()
    fallback = cli("sample", run_dir, "-n", "50", "--seed", "4")
    assert fallback.exit_code == 0, fallback.stderr
    assert "last.safetensors" in fallback.stderr
    assert fallback.stdout == by_last.stdout


def test_prime_warms_up_the_state(corpus):
    """The continuation depends on the prime (the state was warmed on it), at temperature 0."""
    train_tiny(corpus, steps=30)
    outs = {p: cli("sample", "-n", "40", "-t", "0", "-p", p).stdout[len(p):] for p in ("a", "k", "abc hij\n")}
    assert len(set(outs.values())) > 1


def test_info_on_a_run_directory(corpus, in_tmp):
    train_tiny(corpus)
    out = cli("info", in_tmp / "checkpoints" / "tiny")
    assert out.exit_code == 0, out.stderr
    fields = info_fields(out.stdout)
    assert fields["checkpoint"] == str(in_tmp / "checkpoints" / "tiny" / "best.safetensors")  # the best weights
    assert fields["model"].startswith("gru, ")  # the default cell
    assert re.match(r"step 6, epoch [\d.]+, ", fields["progress"]), fields["progress"]  # steps trained


# --- the CJK + emoji corpus --------------------------------------------------------------------------------


def test_cjk_and_emoji_corpus_trains_and_samples_them_back(in_tmp):
    path = in_tmp / "unicode.txt"
    path.write_text(make_text(5000, alphabet=CJK_EMOJI + " \n"), encoding="utf-8")
    train_tiny(path, steps=20)
    m = meta_of(in_tmp / "checkpoints" / "unicode" / "best.safetensors")
    assert sorted(m["vocab"]) == sorted(set(CJK_EMOJI + " \n"))  # code points, one entry per emoji

    out = cli("sample", "-n", "300", "--seed", "5", "--prime", "日本😀")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout) == 3 + 300  # characters, not bytes or UTF-16 units
    assert out.stdout.startswith("日本😀")
    generated = out.stdout[3:]
    assert set(generated) <= set(m["vocab"])
    assert any(ord(c) > 0xFFFF for c in generated)  # astral-plane emoji come back
    assert any("\u4e00" <= c <= "\u9fff" for c in generated)  # and CJK ideographs

    # a real process writes the same characters to a pipe as UTF-8
    proc = run_cli("sample", "-n", "300", "--seed", "5", "--prime", "日本😀")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode("utf-8") == out.stdout


# --- stdin, files, names, --force, --config ----------------------------------------------------------------


def test_dash_reads_the_corpus_from_stdin(in_tmp):
    text = make_text(5000, seed=3)
    result = cli("train", "-", *TINY, "--max-steps", "4", "--eval-every", "2", input=text.encode("utf-8"))
    assert result.exit_code == 0, result.stderr
    run_dir = in_tmp / "checkpoints" / "stdin"
    assert (run_dir / "best.safetensors").is_file()
    m = meta_of(run_dir / "best.safetensors")
    assert sorted(m["vocab"]) == sorted(set(text))


def test_stdin_in_a_real_process(in_tmp):
    text = make_text(5000, seed=4) + "é🙂"
    proc = run_cli("train", "-", *TINY, "--max-steps", "3", "--eval-every", "3", input=text.encode("utf-8"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert "🙂" in meta_of(in_tmp / "checkpoints" / "stdin" / "last.safetensors")["vocab"]


def test_files_written_and_metrics_keys(corpus, in_tmp):
    cfg = write_toml(in_tmp / "c.toml", log_every=4)
    result = cli("train", corpus, *TINY, "--max-steps", "12", "--eval-every", "6", "--config", cfg)
    assert result.exit_code == 0, result.stderr
    run_dir = in_tmp / "checkpoints" / "tiny"
    rows = metrics(run_dir)
    evals = [r for r in rows if "val_loss" in r]
    logs = [r for r in rows if "val_loss" not in r]
    assert [r["step"] for r in logs] == [4, 8, 12]
    assert [r["step"] for r in evals] == [6, 12]
    for r in logs:
        assert LOG_KEYS <= r.keys()
        assert r["lr"] > 0 and r["chars_per_s"] > 0 and r["elapsed_s"] >= 0
        assert 0 < r["train_loss"] < 10  # nats per character; ln(13) is about 2.56
        assert 0 <= r["epoch"]
    for r in evals:
        assert EVAL_KEYS <= r.keys()
        assert math.isclose(r["val_bpc"], r["val_loss"] / math.log(2), rel_tol=1e-9)
        assert 0 < r["val_loss"] < 10
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed)


def test_checkpoint_files_are_safetensors_with_metadata(corpus, in_tmp):
    train_tiny(corpus)
    run_dir = in_tmp / "checkpoints" / "tiny"
    for name in ("best.safetensors", "last.safetensors"):
        path = run_dir / name
        data = path.read_bytes()
        # safetensors: an 8-byte little-endian header length, then that many bytes of JSON, then raw tensor bytes.
        # (Its first byte is the length's low byte, so it may well be 0x80, pickle's first byte: the test must
        # identify the format positively, not look at one byte.)
        (n,) = struct.unpack("<Q", data[:8])
        assert 8 + n <= len(data) and isinstance(json.loads(data[8 : 8 + n]), dict)
        assert not data.startswith(b"PK\x03\x04")  # not a torch.save zip
        with safe_open(str(path), framework="pt") as f:  # an independent reader opens it
            keys = list(f.keys())
            assert f.metadata()  # string metadata present
        assert any(k.startswith("model.") for k in keys)
        m = meta_of(path)
        assert isinstance(m["format"], int)
        assert m["vocab"] == sorted(set(corpus.read_text(encoding="utf-8")))
        assert m["model"]["cell"] == "gru" and m["model"]["hidden_size"] == 16
        assert m["train"]["batch_size"] == 4 and m["train"]["seq_len"] == 16
        assert m["progress"]["step"] == 6
        assert "epoch" in m["progress"] and "elapsed_s" in m["progress"]
        best = min(r["val_loss"] for r in metrics(run_dir) if "val_loss" in r)
        assert math.isclose(m["progress"]["best_val"], best, rel_tol=1e-9)
        assert m["corpus"]["fingerprint"]
    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        assert all(k.startswith("model.") for k in f.keys())  # best holds the model alone
    with safe_open(str(run_dir / "last.safetensors"), framework="pt") as f:
        prefixes = {k.split(".", 1)[0] for k in f.keys()}
    assert {"model", "optim", "state"} <= prefixes


def test_fingerprint_tracks_the_corpus_bytes(in_tmp):
    a, b = in_tmp / "a.txt", in_tmp / "b.txt"
    a.write_text(make_text(4000, seed=1), encoding="utf-8")
    b.write_text(make_text(4000, seed=2), encoding="utf-8")
    train_tiny(a)
    train_tiny(b)
    fa = meta_of(in_tmp / "checkpoints" / "a" / "best.safetensors")["corpus"]["fingerprint"]
    fb = meta_of(in_tmp / "checkpoints" / "b" / "best.safetensors")["corpus"]["fingerprint"]
    assert fa != fb


def test_existing_run_is_refused_without_force_and_overwritten_with_it(corpus, in_tmp):
    train_tiny(corpus)
    run_dir = in_tmp / "checkpoints" / "tiny"
    before = {n: (run_dir / n).read_bytes() for n in ("best.safetensors", "last.safetensors", "metrics.jsonl")}

    again = cli("train", corpus, *TINY, "--max-steps", "4", "--eval-every", "2", "--cell", "gru")
    assert again.exit_code == 1
    assert "--force" in again.stderr and "--run" in again.stderr
    assert again.stderr.startswith("error:")
    after = {n: (run_dir / n).read_bytes() for n in before}
    assert after == before  # nothing touched

    forced = cli("train", corpus, *TINY, "--max-steps", "4", "--eval-every", "2", "--cell", "gru", "--force")
    assert forced.exit_code == 0, forced.stderr
    m = meta_of(run_dir / "best.safetensors")
    assert m["model"]["cell"] == "gru"
    assert m["progress"]["step"] == 4
    assert [r["step"] for r in metrics(run_dir) if "val_loss" in r] == [2, 4]  # a fresh log, not appended


def test_run_and_out_are_honoured(corpus, in_tmp):
    result = train_tiny(corpus, "--run", "my-run", "--out", str(in_tmp / "elsewhere" / "runs"))
    run_dir = in_tmp / "elsewhere" / "runs" / "my-run"
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file()
    assert not (in_tmp / "checkpoints").exists()
    assert "my-run" in result.stderr  # the summary says where the files are
    out = cli("sample", run_dir, "-n", "10", "--seed", "1")
    assert out.exit_code == 0 and len(out.stdout) == 10


def test_run_defaults_to_the_file_stem(in_tmp):
    path = in_tmp / "my.corpus.txt"
    path.write_text(make_text(4000), encoding="utf-8")
    train_tiny(path)
    assert (in_tmp / "checkpoints" / "my.corpus" / "best.safetensors").is_file()


def test_config_toml_is_applied_and_flags_override_it(corpus, in_tmp):
    cfg = write_toml(in_tmp / "train.toml", cell="gru", hidden_size=24, embed_size=6, num_layers=2, dropout=0.2,
                     batch_size=3, seq_len=12, max_steps=5, eval_every=5, lr=0.01)
    result = cli("train", corpus, "--config", cfg, "--hidden-size", "10", "--max-steps", "4", "--eval-every", "2",
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    m = meta_of(in_tmp / "checkpoints" / "tiny" / "last.safetensors")
    assert m["model"]["cell"] == "gru"  # from the file
    assert m["model"]["embed_size"] == 6 and m["model"]["num_layers"] == 2 and m["model"]["dropout"] == 0.2
    assert m["model"]["hidden_size"] == 10  # the flag beats the file
    assert m["train"]["batch_size"] == 3 and m["train"]["seq_len"] == 12 and m["train"]["lr"] == 0.01
    assert m["train"]["max_steps"] == 4 and m["progress"]["step"] == 4
    assert m["train"]["eval_every"] == 2


def test_seeded_training_is_repeatable(corpus, in_tmp):
    train_tiny(corpus, "--seed", "5", "--run", "a")
    train_tiny(corpus, "--seed", "5", "--run", "b")
    train_tiny(corpus, "--seed", "6", "--run", "c")
    loss = {r: [x["val_loss"] for x in metrics(in_tmp / "checkpoints" / r) if "val_loss" in x] for r in "abc"}
    assert loss["a"] == loss["b"]
    assert loss["a"] != loss["c"]


def test_training_learns_something(corpus, in_tmp):
    """A few dozen steps on a highly repetitive text bring the validation loss well under the uniform guess."""
    result = cli("train", corpus, *TINY, "--max-steps", "60", "--eval-every", "30", "--lr", "0.02",
                 "--warmup-steps", "5")
    assert result.exit_code == 0, result.stderr
    evals = [r["val_loss"] for r in metrics(in_tmp / "checkpoints" / "tiny") if "val_loss" in r]
    uniform = math.log(len(set(corpus.read_text(encoding="utf-8"))))
    assert evals[-1] < evals[0]
    assert evals[-1] < uniform - 0.2


# --- version, help, python -m, lazy torch ------------------------------------------------------------------


def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert charrnn.__version__ in result.stdout
    assert result.stdout.strip() == f"charrnn {charrnn.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sample", "--help"], ["info", "--help"],
                                  ["corpus", "--help"]])
def test_help(args):
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout


def test_top_level_help_lists_the_commands():
    result = cli("--help")
    for command in ("train", "sample", "info", "corpus"):
        assert command in result.stdout


def test_train_help_lists_the_documented_options():
    text = cli("train", "--help").stdout
    for flag in ("--cell", "--hidden-size", "--num-layers", "--embed-size", "--dropout", "--batch-size",
                 "--seq-len", "--lr", "--grad-clip", "--max-steps", "--epochs", "--minutes", "--eval-every",
                 "--val-frac", "--seed", "--device", "--run", "--out", "--config", "--force"):
        assert flag in text, flag


def test_python_dash_m_charrnn_help():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "train" in out and "sample" in out
    version = run_cli("--version")
    assert version.returncode == 0
    assert charrnn.__version__ in version.stdout.decode()


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom charrnn.cli import app\n"
            "for args in (['--help'], ['--version'], ['train', '--help'], ['sample', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip().endswith("NO-TORCH")


# --- streaming and closed pipes ----------------------------------------------------------------------------


def test_sample_streams_and_a_closed_pipe_ends_quietly(corpus, in_tmp):
    train_tiny(corpus)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", "-n", "5000000", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=in_tmp)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no text on stdout within 60 s"
        first = os.read(proc.stdout.fileno(), 4096)
        assert first  # text arrives while generation (minutes of it) is still going
        assert proc.poll() is None
        proc.stdout.close()  # like `| head -1`
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


# --- corpora -----------------------------------------------------------------------------------------------


def test_corpus_list():
    result = cli("corpus", "list")
    assert result.exit_code == 0, result.stderr
    assert "python" in result.stdout


def test_corpus_get_python(in_tmp):
    out = in_tmp / "sub" / "dir" / "py.txt"
    out.parent.mkdir(parents=True)  # -o makes no directories (test_habits)
    result = cli("corpus", "get", "python", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.is_file()
    assert result.stdout == ""
    data = out.read_bytes()
    text = data.decode("utf-8")  # valid UTF-8
    assert b"\x00" not in data[:8000]
    assert len(data) > 3_000_000  # the standard library is about 12 MB of source
    assert "def " in text and "import " in text and "class " in text
    assert f"({len(text):,} characters)" in result.stderr  # the count reported is right

    sources = corpora.python_sources()
    assert len(sources) > 100
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    for p in sources:
        rel = p.relative_to(root)
        assert not {"test", "tests", "idle_test"} & set(rel.parts[:-1]), rel
        assert not rel.name.startswith("test_"), rel
    names = {p.relative_to(root).as_posix() for p in sources}
    assert {"json/decoder.py", "unittest/case.py", "collections/__init__.py"} <= names  # library code stays
    # a whole non-test module is in the corpus, verbatim
    assert (root / "json" / "decoder.py").read_text(encoding="utf-8") in text
    # and the test suite's files are not (checked on the few that exist on this interpreter)
    for rel in ("test/test_grammar.py", "test/test_json/test_decode.py", "unittest/test/test_case.py"):
        p = root / rel
        if p.is_file():
            assert p.read_text(encoding="utf-8") not in text, rel
