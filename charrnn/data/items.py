"""Items mode: a corpus that is a list (one name per line, or recipes between blank lines), cut into items,
shuffled with the seed, split into training and held-out items, and laid out again as text for the streams.

Layout of each split: the separator, then every item followed by the separator (`\\nAnna\\nBob\\n`), so every
item is read from just after a separator and its end is predicted like any character (makemore's end token).
An item is what lies between two separators; empty items are dropped. A separator of line ends ("\\n", a blank
line "\\n\\n") takes the line ends at an item's edges with it: CRLF's "\\r", the newline after a last recipe.

Item memory: an item's hash is the BLAKE2b-64 of its ids as uint32, so a sampled item (encoded with the same
vocabulary) is known as a copy of a training or held-out item without keeping the items: 8 bytes an item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.atomic import replacing
from charrnn.config import TrainConfig
from charrnn.data.batches import min_chars
from charrnn.data.vocab import Vocab
from charrnn.errors import CharrnnError

MEMORY = "items.safetensors"  # in a run directory: the hashes of its training and held-out items

CHUNK_ITEMS = 1 << 16  # items laid out at a time: bounds the index arrays of a long list


@dataclass
class Items:
    separator: str
    starts: np.ndarray  # (K,) int64: where each item starts in the corpus ids, in shuffled order
    ends: np.ndarray  # (K,) int64: where it ends (exclusive)
    n_val: int  # the last n_val items of the shuffled order are held out
    train_ids: np.ndarray  # (N_train,) the training items laid out
    val_ids: np.ndarray  # (N_val,) the held-out items laid out

    @property
    def n_train(self) -> int:
        return len(self.starts) - self.n_val

    def hashes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(training items' hashes, held-out items' hashes), each sorted (K,) uint64."""
        every = np.array([item_hash(ids[s:e]) for s, e in zip(self.starts.tolist(), self.ends.tolist(),
                                                               strict=True)], dtype=np.uint64)  # (K,)
        return np.sort(every[: self.n_train]), np.sort(every[self.n_train :])


def item_hash(ids: np.ndarray) -> int:
    """An item's hash, from its ids (any integer dtype)."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.uint32).tobytes(),
                                          digest_size=8).digest(), "little")


def spans(ids: np.ndarray, vocab: Vocab, separator: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the non-empty items of ids, in file order, each (K,) int64."""
    if any(c not in vocab.index for c in separator):  # the separator never occurs: the whole text is one item
        return np.array([0]), np.array([len(ids)])
    sep = vocab.encode(separator).astype(np.int64)  # (S,)
    hits = np.flatnonzero(ids == sep[0])  # candidate separator starts
    for k in range(1, len(sep)):
        hits = hits[hits + k < len(ids)]
        hits = hits[ids[hits + k] == sep[k]]
    if len(sep) > 1 and (np.diff(hits) < len(sep)).any():  # overlaps ("\n\n\n" holds "\n\n" twice): left to right
        kept, last = [], -len(sep)
        for h in hits.tolist():
            if h >= last + len(sep):
                kept.append(h)
                last = h
        hits = np.array(kept, dtype=np.int64)
    starts = np.concatenate([[0], hits + len(sep)]).astype(np.int64)
    ends = np.concatenate([hits, [len(ids)]]).astype(np.int64)
    if not separator.strip("\r\n"):  # line ends: an item's own leading and trailing ones belong to the separator
        ends_of_lines = np.array([vocab.index[c] for c in "\r\n" if c in vocab.index])
        while (grow := (starts < ends) & np.isin(ids[np.minimum(starts, len(ids) - 1)], ends_of_lines)).any():
            starts = starts + grow
        while (cut := (starts < ends) & np.isin(ids[np.maximum(ends - 1, 0)], ends_of_lines)).any():
            ends = ends - cut
    keep = ends > starts
    return starts[keep], ends[keep]


def text_items(text: str, separator: str) -> list[str]:
    """The non-empty items of a text, as spans() cuts ids: for scoring a list."""
    parts = text.split(separator)
    if not separator.strip("\r\n"):
        parts = [p.strip("\r\n") for p in parts]
    return [p for p in parts if p]


def lay_out(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, sep: np.ndarray) -> np.ndarray:
    """The separator, then each item followed by the separator, as one (N,) array of ids' dtype."""
    parts = [sep]
    for c in range(0, len(starts), CHUNK_ITEMS):
        s, e = starts[c : c + CHUNK_ITEMS], ends[c : c + CHUNK_ITEMS]  # (C,) each
        lens = e - s  # (C,)
        seg = lens + len(sep)  # (C,) an item and its separator
        within = np.arange(seg.sum()) - np.repeat(np.cumsum(seg) - seg, seg)  # (M,) offset inside the segment
        is_item = within < np.repeat(lens, seg)  # (M,)
        out = np.empty(len(within), dtype=ids.dtype)  # (M,)
        out[is_item] = ids[np.repeat(s, seg)[is_item] + within[is_item]]
        out[~is_item] = sep[(within - np.repeat(lens, seg))[~is_item]]
        parts.append(out)
    return np.concatenate(parts)


def split(ids: np.ndarray, vocab: Vocab, cfg: TrainConfig, name: str) -> Items:
    """The corpus's items shuffled with --seed; the last --val-frac of them (at most --val-chars characters with
    their separators, at least one item) held out; both parts laid out. Too few for a training window is an
    error."""
    separator, val_frac, val_chars = cfg.item_separator, cfg.val_frac, cfg.val_chars
    starts, ends = spans(ids, vocab, separator)
    if len(starts) < 2:
        raise CharrnnError(f"{name} has {len(starts)} item{'s' * (len(starts) != 1)} between "
                           f"{separator!r} separators; --items needs at least 2 (one to train on, one held out): "
                           "give a list with one item per line, or --item-separator for another separator")
    order = np.random.default_rng(cfg.seed).permutation(len(starts))  # (K,)
    starts, ends = starts[order], ends[order]
    n_val = max(1, int(len(starts) * val_frac))
    if val_chars:  # at most val_chars characters held out, items with their separators
        kept = np.cumsum((ends - starts + len(separator))[::-1])  # (K,) the last k items' characters
        n_val = max(1, min(n_val, int(np.searchsorted(kept, val_chars, side="right"))))
    n_val = min(n_val, len(starts) - 1)
    sep = vocab.encode(separator).astype(ids.dtype)  # (S,): two items or more, so it occurs
    cut = len(starts) - n_val
    train_ids = lay_out(ids, starts[:cut], ends[:cut], sep)
    if len(train_ids) < min_chars(cfg.batch_size, cfg.seq_len):
        raise CharrnnError(f"the {cut:,} training items of {name} lay out as {len(train_ids):,} characters; "
                           f"--batch-size {cfg.batch_size} --seq-len {cfg.seq_len} need at least "
                           f"{min_chars(cfg.batch_size, cfg.seq_len):,}; give more items or lower those")
    return Items(separator, starts, ends, n_val, train_ids, lay_out(ids, starts[cut:], ends[cut:], sep))


@dataclass
class Memory:
    """A run's items, as hashes: tells a sampled item that copies a training or held-out item from a new one."""
    separator: str
    train: np.ndarray  # (K_train,) sorted uint64
    held_out: np.ndarray  # (K_val,) sorted uint64

    def mark(self, ids: np.ndarray) -> str:
        """"train", "held-out" or "new" for an item's ids."""
        h = np.uint64(item_hash(ids))
        for name, known in (("train", self.train), ("held-out", self.held_out)):
            i = int(np.searchsorted(known, h))
            if i < len(known) and known[i] == h:
                return name
        return "new"


def save_memory(path: Path, memory: Memory) -> None:
    from safetensors.numpy import save

    data = save({"train": memory.train, "held_out": memory.held_out}, metadata={"separator": memory.separator})
    with replacing(path, "wb") as f:
        f.write(data)


def load_memory(path: Path) -> Memory:
    """A run's item memory; a file that is not one is an error naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            separator = (f.metadata() or {})["separator"]
            train, held_out = f.get_tensor("train"), f.get_tensor("held_out")
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror}") from None
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise CharrnnError(f"{path} is not an item memory written by charrnn ({e}); train the run again") from None
    for t in (train, held_out):
        if t.dtype != np.uint64 or t.ndim != 1 or (len(t) > 1 and not (t[1:] >= t[:-1]).all()):
            raise CharrnnError(f"{path} is not an item memory written by charrnn; train the run again")
    if not isinstance(separator, str) or not separator:
        raise CharrnnError(f"{path} names no item separator; train the run again")
    return Memory(separator, train, held_out)
