"""Hostile and broken model files: only charrnn's own one-line error comes out, and nothing is unpickled."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from conftest import cli, run_cli, train_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.errors import CheckpointError
from charrnn.model import files as checkpoint


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good(corpus) -> Path:
    train_tiny(corpus)
    return Path("checkpoints/tiny/best.safetensors")


def assert_refused(path: Path, *words: str, code: int = 1):
    for command in ("sample", "info"):
        result = cli(command, path)
        assert result.exit_code == code, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        for word in words:
            assert word in result.stderr


def test_pickle_payload_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    for name in ("model.pt", "best.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload(marker)))
        assert_refused(path, "pickle")
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")  # torch.save's zip format
    assert_refused(tmp_path / "zip.pt", "pickle")
    assert not marker.exists()


def test_pickle_payload_in_a_real_process(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(marker)))
    result = run_cli("sample", tmp_path / "evil.pt")
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", os.urandom(4096), b"\xff" * 8 + b"{}"],
                         ids=["empty", "text", "random", "huge-header"])
def test_junk_files_are_refused(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    assert_refused(path, "not a charrnn checkpoint")


def test_truncated_checkpoint_is_refused(good, tmp_path):
    data = good.read_bytes()
    for cut in (7, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        assert_refused(path)


def test_flipped_tensor_byte_is_reported_as_corrupt(good, tmp_path):
    data = bytearray(good.read_bytes())
    data[-10] ^= 0x01
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    assert_refused(path, "corrupt")


def rewrite(good: Path, path: Path, edit) -> Path:
    tensors, meta = checkpoint.load(good)
    meta.pop("format")
    edit(tensors, meta)
    checkpoint.save(path, tensors, meta)
    return path


def test_wrong_format_version_and_missing_keys(good, tmp_path):
    newer = rewrite(good, tmp_path / "v2.safetensors", lambda t, m: None)
    blob = newer.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["charrnn"])
    meta["format"] = 2
    tensors = checkpoint.load(newer)[0]
    from safetensors.torch import save

    meta_json = json.dumps(meta)
    newer.write_bytes(save(tensors, {"charrnn": meta_json, "sha256": checkpoint.digest(meta_json, tensors)}))
    assert_refused(newer, "format 2")
    no_vocab = rewrite(good, tmp_path / "novocab.safetensors", lambda t, m: m.pop("vocab"))
    assert_refused(no_vocab, "vocab is missing", "not written by this charrnn")
    no_weight = rewrite(good, tmp_path / "noweight.safetensors", lambda t, m: t.pop("model.head.weight"))
    assert_refused(no_weight, "model.head.weight is missing or does not fit")
    huge = rewrite(good, tmp_path / "huge.safetensors", lambda t, m: m["model"].update(hidden_size=10**9))
    assert_refused(huge, "model.hidden_size must be from 1 to 65,536, not 1000000000")  # before any allocation


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "empty_run").mkdir()
    assert_refused(tmp_path / "empty_run", "holds no")


def test_checkpoint_with_cuda_rng_resumes_on_cpu(corpus):
    """A run saved on CUDA carries rng.cuda; a CPU-only machine resumes it and ignores that state."""
    train_tiny(corpus)
    last = Path("checkpoints/tiny/last.safetensors")
    rewrite(last, last, lambda t, m: t.update({"rng.cuda": torch.zeros(1, 16, dtype=torch.uint8)}))
    result = cli("train", corpus, "--run", "tiny", "--resume", "--max-steps", "9", "--device", "cpu")
    assert result.exit_code == 0, result.stderr


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_checkpoint_error(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        checkpoint.load_model(path, torch.device("cpu"))


@FUZZ
@given(st.data())
def test_mutated_checkpoints_only_raise_checkpoint_error(good, tmp_path, data):
    blob = bytearray(good.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255).filter(lambda b, old=blob[i]: b != old))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(bytes(blob))
    try:
        checkpoint.load_model(path, torch.device("cpu"))
    except CheckpointError:
        pass  # the only acceptable failure; a mutation in header padding may also load unchanged


@pytest.mark.parametrize("keep", [4, 100, 0.5, 0.99])  # bytes, or a fraction of the file
def test_a_truncated_checkpoint_is_called_truncated_not_a_pickle(good, tmp_path, keep):
    """A last.safetensors cut short (a full disk, a copy interrupted) starts like any charrnn file: its first
    byte can look like a pickle's. It is reported as truncated."""
    cut = tmp_path / "cut.safetensors"
    blob = good.read_bytes()
    cut.write_bytes(blob[: keep if isinstance(keep, int) else int(len(blob) * keep)])
    result = cli("info", cut)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert "pickle" not in lines[0] and ("truncated" in lines[0]), lines[0]


def test_a_crafted_2_gb_file_is_refused_from_its_header_without_reading_tensors(good, tmp_path, monkeypatch):
    """A file whose metadata asks for a million layers is refused before any tensor is read: the 2 GB of data
    (a sparse file here) are never touched."""
    tensors, meta = checkpoint.load(good)
    meta["model"]["num_layers"] = 10**6
    from safetensors.torch import save

    meta_json = json.dumps(meta)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(save(tensors, {"charrnn": meta_json, "sha256": checkpoint.digest(meta_json, tensors)}))
    with open(huge, "r+b") as f:
        f.truncate(2 << 30)
    monkeypatch.setattr(checkpoint, "st_load", lambda blob: pytest.fail("the tensors were read"))
    with pytest.raises(CheckpointError, match="num_layers must be from 1 to 64, not 1000000"):
        checkpoint.load(huge)


@pytest.mark.parametrize("name", ["\x1b]0;pwned\x07", "\x1b[2Jcleared", "line\u2028break"])
def test_metadata_text_with_terminal_escapes_is_shown_escaped(good, tmp_path, name):
    path = rewrite(good, tmp_path / "esc.safetensors", lambda t, m: m["corpus"].update(name=name))
    result = cli("info", path)
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("corpus"))
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\u2028" not in result.stdout
    assert name.encode("unicode_escape").decode("ascii")[:6] in line


@pytest.mark.parametrize("where", ["name", "vocab"])
def test_a_lone_surrogate_in_metadata_is_refused(good, tmp_path, where):
    def edit(t, m):
        if where == "name":
            m["corpus"]["name"] = "\ud800"
        else:
            m["vocab"][-1] = "\udfff"
            m["vocab"].sort()

    path = rewrite(good, tmp_path / "sur.safetensors", edit)
    assert_refused(path, "lone surrogate")
