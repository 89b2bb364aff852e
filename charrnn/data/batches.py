"""Truncated-BPTT streams: B contiguous streams over the text, read seq_len characters at a time."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch


def min_chars(batch_size: int, seq_len: int) -> int:
    """Fewest characters that give every one of batch_size streams one full window plus its last target."""
    return batch_size * seq_len + 1


class Streams:
    """The text cut into B contiguous streams of L = (N - 1) // B input characters each.

    Window w of an epoch is x = streams[:, wT : wT + T], y shifted by one character. Stream b's last
    target is text[(b + 1) L], inside the text: no target ever wraps to the corpus start.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, full_windows: bool = True):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = (len(ids) - 1) // batch_size  # L
        if self.stream_len < (seq_len if full_windows else 1):
            raise ValueError(f"{len(ids)} characters is too few for {batch_size} streams of {seq_len}")
        n = batch_size * self.stream_len
        # Views, not copies: ids may be a memory-mapped cache far larger than RAM; windows are copied as used.
        self.x = ids[:n].reshape(batch_size, -1)  # (B, L)
        self.y = ids[1 : n + 1].reshape(batch_size, -1)  # (B, L)
        self.rest = ids[n:]  # (N - n,): the last stream's final target, then the (N - 1) mod B characters after it
        self.full_windows = full_windows

    def __len__(self) -> int:
        """Windows per epoch. With full_windows=False a shorter last window takes the remainder."""
        whole, rest = divmod(self.stream_len, self.seq_len)
        return whole + (0 if self.full_windows or rest == 0 else 1)

    def rows(self, lo: int, hi: int) -> Streams:
        """Streams lo .. hi-1 alone (views), as one process of a distributed run reads them; the characters past
        the streams go with the last stream."""
        part = copy.copy(self)
        part.batch_size, part.x, part.y = hi - lo, self.x[lo:hi], self.y[lo:hi]  # (hi - lo, L) each
        part.rest = self.rest if hi == self.batch_size else self.rest[:0]
        return part

    def window(self, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64: inputs and next-character targets."""
        t = w * self.seq_len
        return window(self.x, t, self.seq_len), window(self.y, t, self.seq_len)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for w in range(len(self)):
            yield self.window(w)

    def tail(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x, y), each (1, R): the R = (N - 1) mod B characters past the streams, which continue the last stream
        (evaluation reads them after it, so every character but the first is predicted once). None if R = 0."""
        if len(self.rest) < 2:
            return None
        return window(self.rest[None, :-1], 0, len(self.rest) - 1), window(self.rest[None, 1:], 0, len(self.rest) - 1)


def window(streams: np.ndarray, start: int, length: int) -> torch.Tensor:
    """Columns start .. start+length of (B, L) ids as a (B, T) int64 tensor (a small copy)."""
    return torch.from_numpy(np.ascontiguousarray(streams[:, start : start + length], dtype=np.int64))


def evaluation_streams(ids: np.ndarray, batch_size: int, seq_len: int) -> Streams:
    """The validation layout (also used by scoring): as many of batch_size streams as hold one full window
    (at least one), windows of seq_len with a shorter last one, so every character is read once."""
    return Streams(ids, max(1, min(batch_size, (len(ids) - 1) // seq_len)), seq_len, full_windows=False)
