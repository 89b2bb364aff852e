"""The id cache: a corpus's character ids on disk, memory-mapped for training, reused while its inputs hold still.

An entry is two files in the cache directory, named by a hash of the input paths, --min-char-count and
--encoding-errors:
KEY.ids (raw ids, uint8/uint16/uint32) and KEY.json (the vocab, the id count and dtype, and what the ids were
made from: every input's size and modification time and the content fingerprint). One input list has one entry,
so editing a corpus replaces its entry instead of piling up stale ones. An entry is reused only when the sizes
and modification times match and the content, hashed again, still gives the same fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from charrnn.atomic import remove_stale, replacing, temp_file
from charrnn.data.sources import Source
from charrnn.errors import CharrnnError

FORMAT = 1  # bumped when the entry layout or the encoding rules change, so old entries are rebuilt


def stat_key(sources: list[Source]) -> list[list]:
    """[[key, size, mtime_ns]] per input; stdin's spool is new every run, so only its size counts."""
    rows = []
    for s in sources:
        st = s.path.stat()
        rows.append([s.key, st.st_size, None if s.key == "stdin" else st.st_mtime_ns])
    return rows


def remove_stale_parts(directory: Path) -> None:
    """Temporary ids files and stdin spools whose writers were killed (concurrent runs' own are kept)."""
    if directory.is_dir():
        remove_stale(directory, "*.part")
        remove_stale(directory, ".*.tmp")


class Entry:
    def __init__(self, directory: Path, sources: list[Source], min_count: int, errors: str = "strict"):
        self.directory, self.min_count, self.errors = directory, min_count, errors
        key = json.dumps([FORMAT, [s.key for s in sources], min_count] + ([errors] if errors != "strict" else []))
        stem = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.ids_path, self.meta_path = directory / f"{stem}.ids", directory / f"{stem}.json"
        self.ids = None  # the ids file this entry validated or wrote, held open: open_ids maps that very file

    def candidate(self, stats: list[list]) -> dict | None:
        """The stored metadata if the entry exists, is whole, and was made from inputs of these sizes and times.
        The ids file is opened between two reads of the metadata that must agree, so it is the one they
        describe even if another process republishes the entry meanwhile (two stdin runs share one key)."""
        try:
            text = self.meta_path.read_text(encoding="utf-8")
            ids = open(self.ids_path, "rb")
        except OSError:
            return None
        try:
            again = self.meta_path.read_text(encoding="utf-8")
            meta = json.loads(text)
            whole = os.fstat(ids.fileno()).st_size == meta["n"] * np.dtype(meta["dtype"]).itemsize
            same = (again == text and meta["format"] == FORMAT
                    and meta["inputs"] == stats and meta["min_char_count"] == self.min_count
                    and ("rare" in meta or self.min_count <= 1)  # older entries lack what --min-char-count replaced
                    and meta.get("encoding_errors", "strict") == self.errors)
        except (OSError, ValueError, KeyError, TypeError):
            whole = same = False
        if whole and same:
            self.ids = ids
            return meta
        ids.close()
        return None

    def open_ids(self, meta: dict) -> np.ndarray:
        """(N,) ids, memory-mapped read-only from the file candidate validated or store published: pages come
        from the file as training touches them."""
        with self.ids:
            return np.memmap(self.ids, dtype=meta["dtype"], mode="r", shape=(meta["n"],))

    def writer(self) -> IdsWriter:
        """A temporary ids file for a rebuild (the entry's metadata is removed first: it no longer holds)."""
        return IdsWriter(self)

    def store(self, meta: dict, tmp_ids: Path) -> None:
        """Publish a finished ids file and then its metadata (a reader checks one against the other)."""
        try:
            ids = open(tmp_ids, "rb")  # our own file, whatever is renamed over ids_path later
            os.replace(tmp_ids, self.ids_path)
            self.ids = same_file(self.ids_path, ids)
            with replacing(self.meta_path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": FORMAT, **meta}, ensure_ascii=True))
        except OSError as e:
            raise cache_error(self.directory, e) from None


def same_file(path: Path, f):
    """f, or path opened anew if that is still the same file (so f's name is path)."""
    with contextlib.suppress(OSError):
        named = open(path, "rb")
        if os.fstat(named.fileno()).st_ino == os.fstat(f.fileno()).st_ino:
            f.close()
            return named
        named.close()
    return f


class IdsWriter:
    """A temporary ids file in the cache directory, removed unless it is published with Entry.store."""

    def __init__(self, entry: Entry):
        try:
            entry.directory.mkdir(parents=True, exist_ok=True)
            entry.meta_path.unlink(missing_ok=True)  # the old entry is no longer valid once rebuilding starts
            fd, self.path = temp_file(entry.directory, entry.ids_path.stem, ".part")
        except OSError as e:
            raise cache_error(entry.directory, e) from None
        self.directory = entry.directory
        self.file = os.fdopen(fd, "wb")

    def write(self, ids: np.ndarray) -> None:
        self.write_bytes(ids.tobytes())

    def write_bytes(self, ids: bytes) -> None:
        """Ids already packed (uint8 ids as bytes)."""
        try:
            self.file.write(ids)
        except OSError as e:  # a full disk, most likely
            raise cache_error(self.directory, e) from None

    def __enter__(self) -> IdsWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:  # on disk before it is published: a crash cannot leave a named, partial ids file
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()  # may find the disk full too
        except OSError as e:
            self.path.unlink(missing_ok=True)
            if kind is None:
                raise cache_error(self.directory, e) from None
        if kind is not None:
            self.path.unlink(missing_ok=True)


def cache_error(directory: Path, e: OSError) -> CharrnnError:
    return CharrnnError(f"cannot write the corpus cache in {directory}: {e.strerror}; choose another --out "
                        "(the cache takes 1 to 4 bytes per character)")


def stored(directory: Path) -> list[dict]:
    """The published entries in directory, oldest first: {"stem", "meta", "paths", "bytes", "mtime"}. Files being
    written (KEY~PID@HOST~*.part, .KEY.json~*.tmp) and a KEY.ids whose KEY.json is not there yet (or no longer)
    are not entries; an unreadable KEY.json makes an entry with empty meta."""
    found = []
    for meta_path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        ids_path = meta_path.with_suffix(".ids")
        try:
            sizes = [meta_path.stat(), ids_path.stat()]
        except OSError:
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            meta = {}
        found.append({"stem": meta_path.stem, "meta": meta, "paths": [ids_path, meta_path],
                      "bytes": sum(s.st_size for s in sizes), "mtime": max(s.st_mtime for s in sizes)})
    return sorted(found, key=lambda e: e["mtime"])


def remove(entry: dict) -> None:
    """Unpublish an entry: its metadata first (a reader then finds no entry), then its ids (a run that has them
    memory-mapped keeps reading its own copy)."""
    for path in reversed(entry["paths"]):
        path.unlink(missing_ok=True)
