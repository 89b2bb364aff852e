"""Corpus preparation: streaming decode and encode, multi-file and directory inputs, stdin, the id cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli, make_text, run_cli, train_tiny
from hypothesis import example, given, settings
from hypothesis import strategies as st

from charrnn.data import corpus, sources
from charrnn.data.batches import Streams
from charrnn.data.vocab import Vocab
from charrnn.errors import CharrnnError
from charrnn.model.files import load as load_checkpoint

TRICKY = "a\n é日🙂𝄞\ufeff\r"  # ASCII, 2-, 3- and 4-byte UTF-8, a BOM character, CR
texts = st.text(alphabet=st.one_of(st.sampled_from(TRICKY), st.characters(blacklist_categories=("Cs",),
                                                                           blacklist_characters="\x00")),
                min_size=1, max_size=300)


def prepare(paths: list[Path], chunk_size: int, min_count: int = 0, cache: Path | None = None) -> corpus.Corpus:
    """The real preparation path: resolve the inputs, both passes, the id cache, the memory map."""
    cache = cache or paths[0].parent / "cache"
    return corpus.load(sources.collect([str(p) for p in paths], None, cache), cache, min_count, chunk_size=chunk_size)


def joined(parts: list[str]) -> str:
    """The in-memory reference for joining: a newline between a part that lacks one and the next part."""
    out = ""
    for part in (p for p in parts if p):
        out += ("\n" if out and not out.endswith("\n") else "") + part
    return out


def in_memory(text: str, min_count: int) -> tuple[Vocab, np.ndarray]:
    """The reference: the whole text in memory, rare characters replaced, Vocab.encode."""
    counts = Counter(text)
    rare = {c for c, k in counts.items() if k < min_count}
    text = "".join(corpus.REPLACEMENT if c in rare else c for c in text)
    vocab = Vocab(sorted(set(text)))
    return vocab, vocab.encode(text)


@settings(max_examples=200, deadline=None)
@given(text=texts, chunk_size=st.integers(1, 40), bom=st.booleans(), min_count=st.sampled_from([0, 2, 3]))
@example(text="🙂" * 9 + "x", chunk_size=3, bom=False, min_count=0)  # every 4-byte character split across chunks
@example(text="\ufeff\ufeffa", chunk_size=1, bom=False, min_count=0)  # only the first BOM is dropped
@example(text="ab" * 20 + "é\n", chunk_size=7, bom=False, min_count=0)  # ASCII chunks, then a decoded one
def test_streaming_encode_equals_in_memory_encode(text, chunk_size, bom, min_count):
    raw = ("\ufeff" if bom else "").encode() + text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t.txt")
        path.write_bytes(raw)
        got = prepare([path], chunk_size, min_count)
        vocab, ids = in_memory(raw.decode("utf-8").removeprefix("\ufeff"), min_count)
        assert got.vocab.chars == vocab.chars
        assert np.array_equal(np.asarray(got.ids), ids)
        assert got.ids.dtype == vocab.id_dtype
        assert got.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(texts | st.just(""), min_size=2, max_size=4), chunk_size=st.integers(1, 16))
def test_several_files_join_with_newlines_between(parts, chunk_size):
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp, f"{i}.txt") for i in range(len(parts))]
        for path, part in zip(paths, parts, strict=True):
            path.write_text(part, encoding="utf-8", newline="")
        reference = joined([p[1:] if p.startswith("\ufeff") else p for p in parts])
        if not reference:
            with pytest.raises(CharrnnError, match="is empty"):
                prepare(paths, chunk_size)
            return
        got = prepare(paths, chunk_size)
        assert got.vocab.decode(got.ids) == reference


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 11, 1 << 20])
@pytest.mark.parametrize(("raw", "offset"), [
    (b"abcdefghij\xf0\x9f\x99x", 10),  # a 4-byte character cut short, then ASCII
    ("é日🙂".encode() + b"\xff" + b"tail", 9),  # a byte that never starts a character, after multi-byte ones
    (b"ab\xe2\x82", 2),  # the file ends inside a character
])
def test_invalid_utf8_names_file_and_byte_offset_at_any_chunk_size(tmp_path, raw, offset, chunk_size):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(CharrnnError) as caught:
        prepare([path], chunk_size)
    assert f"bad.txt is not valid UTF-8: byte 0x{raw[offset]:02x} at offset {offset};" in str(caught.value)


@pytest.mark.parametrize(("n_chars", "dtype"), [(256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                                (65537, np.uint32)])
def test_id_dtype_is_the_smallest_that_holds_the_vocab(tmp_path, n_chars, dtype):
    codes = [c for c in range(32, 0x30000) if not 0xD800 <= c < 0xE000][:n_chars]
    text = "".join(map(chr, codes)) * 2
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    got = prepare([path], 1 << 16)
    assert len(got.vocab) == n_chars and got.ids.dtype == dtype and isinstance(got.ids, np.memmap)
    assert Path(got.ids.filename).stat().st_size == len(text) * np.dtype(dtype).itemsize
    assert got.vocab.decode(got.ids) == text


def test_min_char_count_maps_rare_characters_to_one_replacement(tmp_path):
    path = tmp_path / "code.txt"
    text = "ab" * 50 + "🙂" + "c" * 3 + "z"
    path.write_text(text, encoding="utf-8")
    got = prepare([path], 7, min_count=3)
    assert got.vocab.chars == ["a", "b", "c", "\ufffd"]
    assert got.vocab.decode(got.ids) == "ab" * 50 + "\ufffd" + "ccc" + "\ufffd"
    assert prepare([path], 7, min_count=0).vocab.chars == ["a", "b", "c", "z", "🙂"]


def test_streams_read_windows_straight_from_the_memory_map(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) % 300
    ids.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint16, mode="r", shape=(1000,))
    a, b = Streams(mapped, 4, 16), Streams(ids.copy(), 4, 16)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype == ya.dtype and (xa == xb).all() and (ya == yb).all()
    x, y = a.window(2)
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()


def make_tree(root: Path) -> dict[str, str]:
    """A directory of text with a binary file, a hidden directory and a .c file among it."""
    files = {"b.txt": make_text(3000, 1), "sub/a.txt": make_text(3000, 2) + "é", "sub/z.c": "int main;\n" * 200,
             ".git/HEAD": "hidden 🙂\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "sub" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return files


def test_directory_input_through_the_cli_skips_binary_and_hidden_files(tmp_path):
    files = make_tree(tmp_path / "src")
    result = train_tiny(tmp_path / "src", steps=4)
    assert "skipped 1 binary file" in result.stderr
    meta = load_checkpoint(tmp_path / "checkpoints" / "src" / "last.safetensors")[1]
    assert meta["corpus"]["name"] == "src/"
    assert "é" in meta["vocab"] and "🙂" not in meta["vocab"]  # sub/a.txt read; .git/ not searched
    cached = next((tmp_path / "checkpoints" / ".cache").glob("*.ids"))
    chars = Vocab(meta["vocab"])
    expected = joined([files["b.txt"], files["sub/a.txt"], files["sub/z.c"]])  # sorted by path in the directory
    assert chars.decode(np.fromfile(cached, dtype=np.uint8)) == expected


def test_glob_filters_directory_files(tmp_path):
    make_tree(tmp_path / "src")
    inputs = sources.collect([str(tmp_path / "src")], "*.c", tmp_path)
    assert [s.label for s in inputs.sources] == [str(tmp_path / "src" / "sub" / "z.c")]
    assert [Path(s.label).name for s in sources.collect([str(tmp_path / "src")], "sub/*", tmp_path).sources] \
        == ["a.txt", "z.c"]
    result = cli("train", tmp_path / "src", "--glob", "*.rs", *TINY)
    assert result.exit_code == 1 and "holds no UTF-8 text files matching --glob '*.rs'" in result.stderr
    result = train_tiny(tmp_path / "src" / "b.txt", "--glob", "*.c", steps=1)
    assert "warning: --glob '*.c' filters the files of directories, and no directory was given" in result.stderr


def test_stdin_twice_is_a_usage_error():
    result = cli("train", "-", "-", *TINY, input=b"abc")
    assert result.exit_code == 2 and "stdin ('-') can be given only once" in result.stderr


def test_several_inputs_name_the_run_and_keep_the_order_given(tmp_path):
    (tmp_path / "one.txt").write_text(make_text(3000, 3), encoding="utf-8")
    make_tree(tmp_path / "src")
    result = train_tiny(tmp_path / "one.txt", tmp_path / "src", "--glob", "*.txt", steps=3)
    assert "run name 'one-and-1-more'" in result.stderr
    meta = load_checkpoint(tmp_path / "checkpoints" / "one-and-1-more" / "last.safetensors")[1]
    assert meta["corpus"]["name"] == "one.txt + 1 more"
    labels = [Path(s.key).name for s in sources.collect(["src", "one.txt", "src/b.txt"], None, tmp_path).sources]
    assert labels == ["b.txt", "a.txt", "z.c", "one.txt"]  # argument order; a file reached twice read once


def test_a_binary_file_named_outright_is_refused(tmp_path):
    (tmp_path / "blob").write_bytes(b"text\x00more")
    result = cli("train", tmp_path / "blob", *TINY)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'blob'} looks like a binary file (NUL byte at offset 4); " \
                                    "give a UTF-8 text file"


def test_stdin_is_spooled_then_cached_like_a_file(tmp_path):
    data = make_text(5000, 4).encode()
    first = cli("train", "-", *TINY, "--max-steps", "3", input=data)
    assert first.exit_code == 0, first.stderr
    assert "corpus cache rebuilt (no cache yet)" in first.stderr
    meta = load_checkpoint(tmp_path / "checkpoints" / "stdin" / "last.safetensors")[1]
    assert meta["corpus"] == {"name": "stdin", "fingerprint": "sha256:" + hashlib.sha256(data).hexdigest(),
                              "files": [["stdin", hashlib.sha256(data).hexdigest()]]}
    again = cli("train", "-", *TINY, "--max-steps", "3", "--run", "again", input=data)
    assert "corpus cache reused" in again.stderr
    other = cli("train", "-", *TINY, "--max-steps", "3", "--run", "other", input=data[:-1] + b"x")
    assert "corpus cache rebuilt (inputs changed)" in other.stderr
    assert sorted(p.suffix for p in (tmp_path / "checkpoints" / ".cache").iterdir()) == [".ids", ".json"]


def test_stdin_from_a_real_pipe(tmp_path):
    data = make_text(300_000, 5).encode()
    proc = run_cli("train", "-", *TINY, "--max-steps", "2", "--eval-every", "2", "--val-frac", "0.01", input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"300,000 characters" in proc.stderr
    assert not list((tmp_path / "checkpoints" / ".cache").glob("stdin-*"))  # the spool is gone


def test_cache_is_reused_and_rebuilt_when_an_input_changes(tmp_path, corpus):
    assert "corpus cache rebuilt (no cache yet)" in train_tiny(corpus, steps=2).stderr
    assert "corpus cache reused" in train_tiny(corpus, "--run", "b", steps=2).stderr
    corpus.write_text(corpus.read_text() + "more text\n", encoding="utf-8")
    assert "corpus cache rebuilt (inputs changed)" in train_tiny(corpus, "--run", "c", steps=2).stderr
    assert "corpus cache reused" in train_tiny(corpus, "--run", "d", steps=2).stderr
    # Same size and modification time, different content: the content hash catches it.
    stat = corpus.stat()
    text = corpus.read_text()
    corpus.write_text(text[:100] + ("x" if text[100] != "x" else "y") + text[101:], encoding="utf-8")
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = train_tiny(corpus, "--run", "e", steps=2)
    assert "corpus cache rebuilt (inputs changed)" in result.stderr
    # --min-char-count changes the ids, so it has an entry of its own.
    assert "corpus cache rebuilt (no cache yet)" in train_tiny(corpus, "--run", "f", "--min-char-count", "2",
                                                                steps=2).stderr
    entries = sorted(p.name for p in (tmp_path / "checkpoints" / ".cache").iterdir())
    assert len(entries) == 4 and all(p.endswith((".ids", ".json")) for p in entries)


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, corpus):
    train_tiny(corpus, steps=2)
    ids = next((tmp_path / "checkpoints" / ".cache").glob("*.ids"))
    ids.write_bytes(ids.read_bytes()[:-10])  # e.g. a crash or a full disk
    assert "corpus cache rebuilt" in train_tiny(corpus, "--run", "b", steps=2).stderr
    meta = json.loads(ids.with_suffix(".json").read_text())
    assert ids.stat().st_size == meta["n"]


def test_min_char_count_through_the_cli_records_the_replacement_in_the_vocab(tmp_path):
    path = tmp_path / "code.txt"
    path.write_text(make_text(6000, 6) + "🙂", encoding="utf-8")
    result = train_tiny(path, "--min-char-count", "2", steps=2)
    assert "--min-char-count 2: 1 rare character (1 occurrence) maps to \ufffd" in result.stderr
    meta = load_checkpoint(tmp_path / "checkpoints" / "code" / "last.safetensors")[1]
    assert "\ufffd" in meta["vocab"] and "🙂" not in meta["vocab"] and meta["train"]["min_char_count"] == 2
    assert cli("train", path, "--min-char-count", "-1").exit_code == 2


# Linux carries a process's peak RSS across exec, so a child of this (large) pytest process would report pytest's
# peak as its own. A bare launcher starts the run and reports getrusage(RUSAGE_CHILDREN) instead.
LAUNCHER = """import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, proc.stderr.decode()[-2000:])
"""


def peak_rss_mb(*args: str) -> float:
    """Run `python -m charrnn ARGS` and return the peak resident memory of that process alone, in MB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, sys.executable, "-m", "charrnn", *args],
                          env=env, capture_output=True, text=True)
    rc, maxrss_kb, stderr = proc.stdout.split(" ", 2)
    assert proc.returncode == 0 and rc == "0", stderr + proc.stderr
    return int(maxrss_kb) / 1024  # Linux reports kilobytes


def write_corpus(path: Path, megabytes: int) -> None:
    block = (make_text(1 << 20, 7) + "ünïcödé 日本語 🙂\n").encode()
    with open(path, "wb") as f:
        for _ in range(megabytes * (1 << 20) // len(block)):
            f.write(block)


@pytest.mark.big
def test_memory_stays_flat_from_a_small_to_a_large_corpus(tmp_path):
    """Train on 300 MB and on 3 MB: the process's peak memory differs by far less than the corpus size."""
    write_corpus(tmp_path / "small.txt", 3)
    write_corpus(tmp_path / "large.txt", 300)
    flags = [*TINY, "--max-steps", "2", "--eval-every", "1000", "--val-frac", "0.0001"]
    try:
        small = peak_rss_mb("train", str(tmp_path / "small.txt"), *flags)
        start = time.monotonic()
        large = peak_rss_mb("train", str(tmp_path / "large.txt"), *flags)
    finally:  # pytest keeps recent temporary directories; do not leave 600 MB behind
        (tmp_path / "large.txt").unlink()
        for path in (tmp_path / "checkpoints" / ".cache").glob("*.ids"):
            path.unlink()
    print(f"peak RSS: 3 MB corpus {small:.0f} MB, 300 MB corpus {large:.0f} MB "
          f"({time.monotonic() - start:.0f} s for the large run)")
    assert large - small < 100


def test_an_unwritable_cache_is_one_line(tmp_path, corpus):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".cache").write_text("a file where the cache wants a directory")
    result = cli("train", corpus, *TINY, "--out", tmp_path / "runs")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: cannot write the corpus cache in {tmp_path / 'runs' / '.cache'}: ")
    assert "choose another --out" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_ids_mapped_are_the_file_validated_even_if_the_entry_is_republished(tmp_path, monkeypatch):
    """Two runs on stdin share one cache key: if another process republishes the entry between this run's check
    and its memory map, this run still maps the file it checked."""
    path = tmp_path / "t.txt"
    path.write_text("abcabc\n" * 50, encoding="utf-8")
    first = prepare([path], 64)
    ids_path = Path(first.ids.filename)
    real = corpus.file_digests

    def republished_meanwhile(sources, chunk_size=corpus.CHUNK):
        other = ids_path.with_name("other")
        other.write_bytes(bytes([1]) * ids_path.stat().st_size)  # the same size, other ids
        os.replace(other, ids_path)
        return real(sources, chunk_size)

    monkeypatch.setattr(corpus, "file_digests", republished_meanwhile)
    again = prepare([path], 64)  # reused: checked, then the other process's file lands, then mapped
    assert again.vocab.decode(again.ids) == "abcabc\n" * 50


def test_a_rebuilt_id_cache_is_on_disk_before_it_is_published(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: renamed.append((str(a), synced.copy())) or real_replace(a, b))
    path = tmp_path / "t.txt"
    path.write_text("hello\n" * 10, encoding="utf-8")
    prepare([path], 64)
    part, synced_before = next((a, s) for a, s in renamed if a.endswith(".part"))
    assert part in synced_before  # fsynced, then renamed into place
