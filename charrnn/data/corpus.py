"""Read a corpus (files, directories, '-'), validate it as UTF-8 text, encode it to a cached id array, split it.

Preparation streams, so memory stays flat whatever the corpus size: pass 1 finds the vocabulary (counting each
character only when --min-char-count needs it) and hashes the bytes; pass 2 encodes characters to ids and appends
them to the id cache. Both read CHUNK bytes at a time through an incremental UTF-8 decoder and work on whole
chunks with numpy; nothing loops over characters in Python.

Joining several files: each file's leading byte-order mark is dropped, and a newline is put between two files
when the first does not end with one, so lines of different files never run together. One file is kept as it is.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.data import idcache
from charrnn.data.items import Items
from charrnn.data.sources import Inputs, Source, count_skipped
from charrnn.data.text import BadBytes, Reader
from charrnn.data.vocab import REPLACEMENT, Vocab
from charrnn.errors import CharrnnError

CHUNK = 256 << 10  # bytes read at a time; measured fastest (bench/corpus.py): a chunk's arrays stay in CPU cache
CODE_SPACE = 0x110000  # Unicode code points 0 .. U+10FFFF
NEWLINE = ord("\n")  # put between files that do not end with one


@dataclass
class Corpus:
    name: str  # file name, "stdin", "DIR/", or "FIRST + N more"
    vocab: Vocab
    ids: np.ndarray  # (N,) character ids, N = number of characters; memory-mapped from the id cache
    fingerprint: str  # "sha256:<hex>" of the raw bytes (several inputs: of their digests, in order)
    files: list[list[str]] = field(default_factory=list)  # [input's label, its SHA-256] per input, in order
    note: str = ""  # whether the id cache was reused or rebuilt, for the caller to report
    notes: list[str] = field(default_factory=list)  # for the caller to report: files skipped, rare characters
    warnings: list[str] = field(default_factory=list)  # for the caller to warn about: invalid bytes replaced, ...
    items: Items | None = None  # items mode: the items, shuffled and split (session.splits makes them)

    def split(self, val_frac: float, val_chars: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous (train, val): the last val_frac of the text, at most val_chars characters, is validation."""
        n_val = held_out(len(self.ids), val_frac, val_chars)
        return self.ids[: len(self.ids) - n_val], self.ids[len(self.ids) - n_val :]


    def described(self, val_frac: float, val_chars: int, seed: int) -> str:
        """How the corpus is split: characters held out, or (items mode) items."""
        if self.items is None:
            return f"{len(self.ids):,} characters ({held_out(len(self.ids), val_frac, val_chars):,} held out)"
        return (f"{plural(len(self.items.starts), 'item')} ({self.items.n_val:,} held out, whole; shuffled with "
                f"--seed {seed}) in {len(self.ids):,} characters")


def held_out(n: int, val_frac: float, val_chars: int) -> int:
    """Characters held out for validation from a corpus of n: the last val_frac, at most val_chars (0: no cap)."""
    n_val = int(n * val_frac)
    return min(n_val, val_chars) if val_chars else n_val


Chunk = bytes | np.ndarray  # a pure-ASCII chunk as its bytes (bytes are code points), else (n,) uint32 code points


def file_chunks(source: Source, chunk_size: int, bad: BadBytes,
                on_bytes: Callable[[bytes], None] | None = None) -> Iterator[Chunk]:
    """One file's characters, chunk by chunk, through the UTF-8 reader (data/text.py): a leading BOM dropped,
    invalid bytes as bad's mode says. Pure-ASCII reads come as bytes, for bytes.translate."""
    reader = Reader(source.label, bad)
    with open(source.path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            if on_bytes is not None and data:
                on_bytes(data)
            text = reader.decode(data, final=not data, ascii_as_bytes=True)
            chunk = text if isinstance(text, bytes) else np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if len(chunk):
                yield chunk
            if not data:
                return


def joined_chunks(sources: list[Source], chunk_size: int, bad: BadBytes,
                  digests: list | None = None) -> Iterator[Chunk]:
    """The characters of every input in order, with a newline between files that lack a final one."""
    last = None  # the last code point yielded
    for source in sources:
        digest = hashlib.sha256()
        first = True
        for chunk in file_chunks(source, chunk_size, bad, digest.update if digests is not None else None):
            if first and last is not None and last != NEWLINE:
                yield bytes([NEWLINE])
            first, last = False, int(chunk[-1])
            yield chunk
        if digests is not None:
            digests.append(digest.hexdigest())


def combine(digests: list[str]) -> str:
    """The corpus fingerprint: one input's SHA-256; several inputs: the SHA-256 of their digests in order."""
    if len(digests) == 1:
        return "sha256:" + digests[0]
    return "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()


def file_digests(sources: list[Source], chunk_size: int = CHUNK) -> list[str]:
    """Each input's SHA-256, hashing its bytes without decoding them (checking a cache entry)."""
    return [file_sha256(source.path, chunk_size) for source in sources]


def file_sha256(path: Path, chunk_size: int = CHUNK) -> str:
    """The SHA-256 of a file's bytes, read chunk_size at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk_size):
            digest.update(data)
    return digest.hexdigest()


class Tally:
    """Pass 1: which characters occur, and how often when --min-char-count needs exact counts.

    Without exact counts a chunk costs one lookup per character (known?) and new characters are rare after the
    first chunks; ASCII chunks go through bytes.translate, which deletes the known bytes at C speed.
    """

    def __init__(self, exact: bool):
        self.exact = exact
        self.counts = np.zeros(CODE_SPACE, dtype=np.int64)  # (CODE_SPACE,) occurrences, when exact
        self.known = np.zeros(CODE_SPACE, dtype=bool)  # (CODE_SPACE,) seen, when not exact
        self.ascii = b""  # the ASCII bytes in known, for bytes.translate
        self.n = 0  # characters

    def add(self, chunk: Chunk) -> None:
        self.n += len(chunk)
        if self.exact:
            found = np.bincount(np.frombuffer(chunk, dtype=np.uint8) if isinstance(chunk, bytes) else chunk)
            self.counts[: len(found)] += found  # found: (max code + 1,)
        elif isinstance(chunk, bytes):
            if new := chunk.translate(None, self.ascii):  # usually empty
                self.see(np.frombuffer(new, dtype=np.uint8))
        elif not self.known[chunk].all():
            self.see(chunk[~self.known[chunk]])

    def see(self, codes: np.ndarray) -> None:
        self.known[codes] = True
        self.ascii = bytes(np.flatnonzero(self.known[:128]).astype(np.uint8))

    def result(self) -> np.ndarray:
        """(CODE_SPACE,) occurrences (exact), or 1 for every character seen."""
        return self.counts if self.exact else self.known.astype(np.int64)


def count_chars(sources: list[Source], chunk_size: int, bad: BadBytes,
                exact: bool = True) -> tuple[np.ndarray, int, list[str]]:
    """Pass 1: (CODE_SPACE,) occurrences (exact, or 1 for each character seen), characters, each input's
    SHA-256."""
    tally = Tally(exact)
    digests: list[str] = []
    for chunk in joined_chunks(sources, chunk_size, bad, digests):
        tally.add(chunk)
    return tally.result(), tally.n, digests


def make_vocab(counts: np.ndarray, min_count: int) -> tuple[Vocab, np.ndarray, int]:
    """The vocab, a (CODE_SPACE,) code point -> id lookup table, and how many rare characters were replaced."""
    seen = np.flatnonzero(counts)
    rare = seen[counts[seen] < min_count] if min_count > 1 else seen[:0]
    keep = set(seen.tolist()) - set(rare.tolist())
    if len(rare):
        keep.add(ord(REPLACEMENT))
    vocab = Vocab([chr(c) for c in keep])
    lut = np.zeros(CODE_SPACE, dtype=vocab.id_dtype)
    lut[[ord(c) for c in vocab.chars]] = np.arange(len(vocab))
    lut[rare] = vocab.index.get(REPLACEMENT, 0)
    return vocab, lut, len(rare)


def encode_to(sources: list[Source], lut: np.ndarray, writer: idcache.IdsWriter, chunk_size: int,
              errors: str) -> int:
    """Pass 2: write every character's id (a table lookup per chunk); returns the number of characters."""
    table = lut[:256].tobytes() if lut.dtype == np.uint8 else None  # byte -> id, for bytes.translate
    n = 0
    for chunk in joined_chunks(sources, chunk_size, BadBytes(errors)):
        if isinstance(chunk, bytes) and table is not None:
            writer.write_bytes(chunk.translate(table))  # ASCII chunk, uint8 ids: C speed
        elif isinstance(chunk, bytes):
            writer.write(lut[np.frombuffer(chunk, dtype=np.uint8)])
        else:
            writer.write(lut[chunk])
        n += len(chunk)
    return n


def prepare(entry: idcache.Entry, sources: list[Source], name: str, min_count: int, errors: str,
            chunk_size: int) -> dict:
    """Both passes into the cache entry; returns its metadata (with what --min-char-count replaced)."""
    stats = idcache.stat_key(sources)
    bad = BadBytes(errors)
    counts, n, digests = count_chars(sources, chunk_size, bad, exact=min_count > 1)
    if n == 0:
        empty = sources[0].label if len(sources) == 1 else name  # the path as given
        raise CharrnnError(f"{empty} is empty; give a text file with some characters in it")
    vocab, lut, n_rare = make_vocab(counts, min_count)
    with entry.writer() as writer:
        written = encode_to(sources, lut, writer, chunk_size, errors)
    if written != n or idcache.stat_key(sources) != stats:
        writer.path.unlink(missing_ok=True)
        raise CharrnnError(f"{name} changed while it was being read; run again once it is finished")
    replaced = int(counts[(counts > 0) & (counts < min_count)].sum()) if n_rare else 0
    meta = {"inputs": stats, "min_char_count": min_count, "encoding_errors": errors, "bad_bytes": bad.report(),
            "fingerprint": combine(digests), "digests": digests, "n": n, "dtype": np.dtype(vocab.id_dtype).name,
            "vocab": vocab.chars, "rare": [n_rare, replaced]}
    entry.store(meta, writer.path)
    return meta


def rare_note(meta: dict) -> list[str]:
    """What --min-char-count replaced, for a cache entry built now or reused."""
    n_rare, replaced = meta.get("rare", [0, 0])
    if not n_rare:
        return []
    return [f"--min-char-count {meta['min_char_count']}: {plural(n_rare, 'rare character')} "
            f"({plural(replaced, 'occurrence')}) {'maps' if n_rare == 1 else 'map'} to {REPLACEMENT} (U+FFFD)"]


def load(inputs: Inputs, cache_dir: Path, min_count: int = 0, errors: str = "strict",
         chunk_size: int = CHUNK) -> Corpus:
    """Encode the inputs (or reuse their cached ids) and map the ids into memory. errors: --encoding-errors."""
    notes = [f"skipped {count_skipped(inputs.skipped)}"] if inputs.skipped else []
    idcache.remove_stale_parts(cache_dir)
    entry = idcache.Entry(cache_dir, inputs.sources, min_count, errors)
    try:
        meta = entry.candidate(idcache.stat_key(inputs.sources))
        digests = file_digests(inputs.sources, chunk_size) if meta is not None else []
        if meta is not None and meta["fingerprint"] == combine(digests):
            note = f"corpus cache reused: {entry.ids_path} ({meta['n']:,} characters)"
        else:
            why = "inputs changed" if entry.meta_path.exists() else "no cache yet"
            start = time.monotonic()
            meta = prepare(entry, inputs.sources, inputs.name, min_count, errors, chunk_size)
            digests = meta["digests"]
            size, seconds = sum(row[1] for row in meta["inputs"]) / 1e6, time.monotonic() - start
            rate = f", {size / seconds:,.0f} MB/s" if seconds >= 0.1 else ""
            note = (f"corpus cache rebuilt ({why}): {entry.ids_path} ({meta['n']:,} characters; "
                    f"{size:,.1f} MB in {seconds:.1f} s{rate})")
    except OSError as e:
        raise CharrnnError(f"cannot read {e.filename or inputs.name}: {e.strerror}") from None
    finally:
        inputs.close()
    notes += rare_note(meta)
    files = [[source.label, digest] for source, digest in zip(inputs.sources, digests, strict=True)]
    return Corpus(inputs.name, Vocab(meta["vocab"]), entry.open_ids(meta), meta["fingerprint"], files, note,
                  notes,
                  [*inputs.warnings, *([meta["bad_bytes"]] if meta.get("bad_bytes") else [])])


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"
