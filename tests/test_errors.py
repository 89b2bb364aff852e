"""Every bad input: one line on stderr starting with 'error:', the documented exit code, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, make_text, run_cli, train_tiny
from safetensors.torch import save_file

from charrnn.model import files as checkpoint


def numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def check_stderr(stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def assert_error(result, code: int, *fragments: str) -> str:
    """An in-process CliRunner result failed cleanly: no escaped exception, one error line, nothing on stdout."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    return check_stderr(result.stderr, *fragments)


def error_line(result, code: int) -> str:
    """Looser than assert_error, for tests about the message's content: the exit code, no traceback, and
    exactly one 'error:' line (other lines are the one-line rule's business, tested elsewhere)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_proc_error(proc, code: int, *fragments: str) -> str:
    """The same, for a real process."""
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == code, (proc.returncode, stderr)
    assert proc.stdout == b""
    return check_stderr(stderr, *fragments)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def train(path: Path, *extra: str):
    return cli("train", path, *TINY, "--max-steps", "2", "--eval-every", "2", *extra)


# --- corpus content ----------------------------------------------------------------------------------------


def test_empty_file(in_tmp):
    assert_error(train(write(in_tmp / "empty.txt", b"")), 1, "empty")
    assert not (in_tmp / "checkpoints" / "empty" / "best.safetensors").exists()


def test_file_with_only_a_bom(in_tmp):
    assert_error(train(write(in_tmp / "bom.txt", b"\xef\xbb\xbf")), 1, "empty")


def test_empty_stdin():
    assert_error(cli("train", "-", *TINY, input=b""), 1, "empty")


def minimum(b: int, t: int, val_frac: float) -> int:
    """Fewest characters giving b streams of one t-window (plus a target) to train on and one to validate."""
    n = 1
    while not (n - int(n * val_frac) >= b * t + 1 and int(n * val_frac) >= t + 1):
        n += 1
    return n


def test_too_small_corpus_names_the_minimum(in_tmp):
    path = write(in_tmp / "small.txt", make_text(100).encode())
    line = assert_error(train(path), 1)
    need = minimum(4, 16, 0.1)  # TINY: --batch-size 4 --seq-len 16, default --val-frac 0.1
    assert need in numbers(line), line
    assert "100" in line  # and says how many there are
    assert not (in_tmp / "checkpoints" / "small").exists() or not any((in_tmp / "checkpoints" / "small").iterdir())


def test_a_handful_of_characters_is_refused_before_training():
    assert_error(cli("train", "-", *TINY, input=b"abc"), 1)


@pytest.mark.parametrize(("b", "t", "size"), [(4, 16, 100), (8, 64, 300), (8, 64, 600), (32, 128, 1000)])
def test_the_named_minimum_is_exact(in_tmp, b, t, size):
    """The number in the message is the minimum: that many characters train, one fewer is refused."""
    flags = ["--hidden-size", "8", "--embed-size", "4", "--num-layers", "1", "--batch-size", str(b),
             "--seq-len", str(t), "--max-steps", "1", "--eval-every", "1"]
    line = error_line(cli("train", "-", *flags, input=make_text(size).encode()), 1)
    need = int(max(numbers(line)))
    assert need > size
    fewer = cli("train", "-", *flags, "--run", "fewer", input=make_text(need - 1).encode())
    assert fewer.exit_code == 1, f"a corpus one character short of the named minimum ({need}) trained"
    error_line(fewer, 1)
    exact = cli("train", "-", *flags, "--run", "exact", input=make_text(need).encode())
    assert exact.exit_code == 0, f"a corpus of the named minimum ({need}) was refused: {exact.stderr}"


@pytest.mark.parametrize("offset", [0, 10, 7999])
def test_binary_file_is_refused(in_tmp, offset):
    data = bytearray(make_text(9000).encode())
    data[offset] = 0
    assert_error(train(write(in_tmp / "blob.bin", bytes(data))), 1, "binary")


def test_binary_file_in_a_real_process(in_tmp):
    data = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 20
    assert_proc_error(run_cli("train", write(in_tmp / "prog", data)), 1, "binary")


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"hello\xff world" * 500, 5),
        ("h\u00e9llo".encode() + b"\xfe" + b"x" * 5000, 6),  # a byte offset, not a character offset (5)
        (make_text(10000).encode() + b"\xc0\xaf" + b"y" * 100, 10000),  # overlong encoding
        (make_text(5000).encode() + "日".encode()[:2], 5000),  # truncated multi-byte character at the end
        ("\U0001f600".encode() * 1000 + b"\x80" + b"z" * 100, 4000),  # stray continuation byte after emoji
    ],
)
def test_invalid_utf8_names_the_byte_offset(in_tmp, data, offset):
    line = assert_error(train(write(in_tmp / "latin.txt", data)), 1, "utf-8")
    assert offset in numbers(line), line


def test_invalid_utf8_in_a_real_process(in_tmp):
    line = assert_proc_error(run_cli("train", write(in_tmp / "bad.txt", b"hello\xff" + b"a" * 6000)), 1, "utf-8")
    assert "offset 5" in line


def test_missing_file(in_tmp):
    assert_error(train(in_tmp / "nope.txt"), 1, "nope.txt")


def test_missing_file_in_a_real_process():
    assert_proc_error(run_cli("train", "does-not-exist.txt"), 1, "does-not-exist.txt")


def test_directory_without_text_as_file(in_tmp):
    (in_tmp / "adir").mkdir()
    assert_error(train(in_tmp / "adir"), 1)


# --- the text is kept as it is, except a leading BOM --------------------------------------------------------


def test_leading_bom_is_dropped(in_tmp):
    text = make_text(5000)
    path = write(in_tmp / "bom.txt", b"\xef\xbb\xbf" + text.encode())
    train_tiny(path)
    meta = checkpoint.load(in_tmp / "checkpoints" / "bom" / "best.safetensors")[1]
    assert "\ufeff" not in meta["vocab"]
    assert meta["vocab"] == sorted(set(text))


def test_only_the_leading_bom_is_dropped_and_crlf_is_kept(in_tmp):
    text = make_text(5000).replace("\n", "\r\n")
    text = text[:3000] + "\ufeff" + text[3000:]  # a U+FEFF inside the text is an ordinary character
    path = write(in_tmp / "mid.txt", b"\xef\xbb\xbf" + text.encode())
    train_tiny(path)
    vocab = checkpoint.load(in_tmp / "checkpoints" / "mid" / "best.safetensors")[1]["vocab"]
    assert "\ufeff" in vocab and "\r" in vocab and "\n" in vocab


# --- flags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temp", ["-1", "-0.5", "nan", "inf", "-inf"])
def test_bad_temperature_is_a_usage_error(corpus, temp):
    train_tiny(corpus)
    assert_error(cli("sample", "--temp", temp, "-n", "5"), 2, "temp")


def test_bad_temperature_needs_no_checkpoint():
    assert_error(cli("sample", "--temp", "-1"), 2, "temp")


def test_bad_temperature_in_a_real_process():
    assert_proc_error(run_cli("sample", "--temp", "nan"), 2, "temp")


def test_negative_length_is_a_usage_error(corpus):
    train_tiny(corpus)
    assert_error(cli("sample", "-n", "-3"), 2, "length")


@pytest.mark.parametrize(
    ("flag", "value", "word"),
    [
        ("--cell", "transformer", "cell"),
        ("--cell", "LSTMx", "cell"),
        ("--device", "tpu", "device"),
        ("--val-frac", "0", "val-frac"),
        ("--val-frac", "1", "val-frac"),
        ("--max-steps", "0", "max-steps"),
        ("--hidden-size", "0", "hidden-size"),
        ("--num-layers", "0", "num-layers"),
        ("--dropout", "1", "dropout"),
        ("--lr", "0", "lr"),
        ("--seq-len", "0", "seq-len"),
        ("--batch-size", "0", "batch-size"),
    ],
)
def test_bad_train_flags_are_usage_errors(corpus, in_tmp, flag, value, word):
    assert_error(train(corpus, flag, value), 2, word)
    assert not (in_tmp / "checkpoints" / "tiny" / "best.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_is_a_usage_error(corpus):
    assert_error(train(corpus, "--device", "cuda"), 2, "cuda")


def test_bad_cell_in_a_real_process(corpus):
    assert_proc_error(run_cli("train", corpus, "--cell", "bogus"), 2, "cell")


def test_unparseable_number_is_a_usage_error_without_traceback(corpus):
    result = cli("sample", "--temp", "warm")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    result = cli("train", corpus, "--hidden-size", "big")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_config_with_an_unknown_key(corpus, in_tmp):
    cfg = in_tmp / "bad.toml"
    cfg.write_text('hidden_size = 16\nwarp_drive = "on"\n', encoding="utf-8")
    assert_error(train(corpus, "--config", cfg), 2, "warp_drive")


def test_config_that_is_not_toml(corpus, in_tmp):
    cfg = in_tmp / "bad.toml"
    cfg.write_text("this is = = not toml [\n", encoding="utf-8")
    assert_error(train(corpus, "--config", cfg), 2, "toml")


def test_config_that_does_not_exist(corpus, in_tmp):
    assert_error(train(corpus, "--config", in_tmp / "missing.toml"), 2, "missing.toml")


def test_out_that_cannot_be_created(corpus, in_tmp):
    (in_tmp / "afile").write_text("x", encoding="utf-8")
    assert_error(train(corpus, "--out", in_tmp / "afile" / "runs"), 1)


# --- checkpoints -------------------------------------------------------------------------------------------


def test_sample_with_no_runs():
    assert_error(cli("sample", "-n", "5"), 1, "train")


def test_info_with_no_runs():
    assert_error(cli("info"), 1)


def test_sample_with_no_runs_in_a_real_process():
    assert_proc_error(run_cli("sample", "-n", "5"), 1)


def test_sample_of_a_missing_checkpoint(in_tmp):
    assert_error(cli("sample", in_tmp / "nothing.safetensors"), 1, "nothing.safetensors")


def test_sample_of_an_empty_directory(in_tmp):
    (in_tmp / "empty_run").mkdir()
    assert_error(cli("sample", in_tmp / "empty_run"), 1)


def test_sample_of_a_text_file(corpus):
    assert_error(cli("sample", corpus, "-n", "5"), 1)
    assert_error(cli("info", corpus), 1)


def test_sample_of_a_text_file_in_a_real_process(corpus):
    assert_proc_error(run_cli("sample", corpus, "-n", "5"), 1)


def test_sample_of_a_pickle_file_is_refused(in_tmp):
    path = in_tmp / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    assert_error(cli("sample", path, "-n", "5"), 1, "pickle")


def test_sample_of_a_foreign_safetensors_file(in_tmp):
    path = in_tmp / "other.safetensors"
    save_file({"w": torch.zeros(4)}, str(path), metadata={"framework": "someone else"})
    assert_error(cli("sample", path, "-n", "5"), 1)


def test_sample_of_a_truncated_checkpoint(corpus, in_tmp):
    train_tiny(corpus)
    src = in_tmp / "checkpoints" / "tiny" / "best.safetensors"
    cut = in_tmp / "cut.safetensors"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert_error(cli("sample", cut, "-n", "5"), 1)


def test_sample_of_a_corrupted_checkpoint(corpus, in_tmp):
    train_tiny(corpus)
    src = in_tmp / "checkpoints" / "tiny" / "best.safetensors"
    data = bytearray(src.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the tensor data
    bad = write(in_tmp / "flipped.safetensors", bytes(data))
    assert_error(cli("sample", bad, "-n", "5"), 1)


def test_checkpoint_with_a_newer_format_is_refused(corpus, in_tmp):
    train_tiny(corpus)
    tensors, meta = checkpoint.load(in_tmp / "checkpoints" / "tiny" / "best.safetensors")
    future = in_tmp / "future.safetensors"
    checkpoint.save(future, tensors, {**meta, "format": 999})  # an intact file from a later charrnn
    assert_error(cli("sample", future, "-n", "5"), 1, "format")


# --- sampling input that is not an error -------------------------------------------------------------------


def test_prime_with_unknown_characters_warns_and_skips_them(corpus):
    train_tiny(corpus)
    result = cli("sample", "-n", "20", "--prime", "ab\u00dfZ\U0001f600", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "warning" in result.stderr.lower()
    for ch in ("\u00df", "Z", "\U0001f600"):
        assert ch in result.stderr
    assert result.stdout.startswith("ab\u00dfZ\U0001f600")
    assert len(result.stdout) == 5 + 20
    assert set(result.stdout[5:]) <= set(corpus.read_text(encoding="utf-8"))


def test_prime_of_only_unknown_characters_still_samples(corpus):
    train_tiny(corpus)
    result = cli("sample", "-n", "15", "--prime", "ZZZ", "--seed", "2")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout) == 3 + 15


# --- corpora -----------------------------------------------------------------------------------------------


def test_unknown_corpus_name():
    assert_error(cli("corpus", "get", "klingon"), 2, "klingon")


def test_corpus_get_to_an_unwritable_place(in_tmp):
    (in_tmp / "afile").write_text("x", encoding="utf-8")
    assert_error(cli("corpus", "get", "python", "-o", in_tmp / "afile" / "py.txt"), 1)


def test_error_lines_do_not_wrap_in_a_narrow_terminal(in_tmp):
    """A long path makes a long message: still one line even when the terminal is 40 columns wide."""
    deep = in_tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    missing = deep / ("f" * 60 + ".txt")
    env = {**os.environ, "COLUMNS": "40", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "charrnn", "train", str(missing)], capture_output=True,
                          timeout=120, env=env)
    assert_proc_error(proc, 1, "f" * 60)


@pytest.mark.parametrize("args", [("sample", "--bogus"), ("train", "--epochs", "abc", "x"), ("train",)])
def test_parser_errors_are_one_line_in_a_real_process(args):
    result = run_cli(*args)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and lines[0].endswith(f"see charrnn {args[0]} --help")
