"""Vocab: the corpus's characters (Unicode code points), sorted, <-> integer ids."""

from __future__ import annotations

import numpy as np

REPLACEMENT = "\ufffd"  # what --min-char-count maps rare characters to


class Vocab:
    def __init__(self, chars: list[str], fallback: str | None = None):
        """fallback: a character of the vocab that every unknown character is read as (a model trained with
        --min-char-count reads rare characters as U+FFFD); None: unknown characters are errors or skipped."""
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars) or (fallback and fallback not in chars):
            raise ValueError("a vocab is a list of distinct single characters")
        self.fallback = fallback
        self.chars = sorted(chars)
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # (V,) sorted code points
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.index or self.fallback is not None

    @property
    def id_dtype(self) -> type:
        """The smallest unsigned integer type that holds every id."""
        return np.uint8 if len(self) <= 1 << 8 else np.uint16 if len(self) <= 1 << 16 else np.uint32

    def encode(self, text: str) -> np.ndarray:
        """(N,) ids, vectorised: code points looked up by binary search. Every character must be known
        (or is read as the fallback)."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (N,); a lone
        # surrogate (JSON can hold one) is a code point no vocabulary has
        ids = np.searchsorted(self._codes, codes)  # (N,)
        known = ids < len(self)
        known[known] = self._codes[ids[known]] == codes[known]
        if self.fallback is not None:
            ids[~known] = self.index[self.fallback]
        elif not known.all():
            missing = sorted({chr(c) for c in codes[~known]})
            raise KeyError(f"characters not in the vocabulary: {missing!r}")
        return ids.astype(self.id_dtype)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def unknown(self, text: str) -> list[str]:
        """Characters of text that are not in the vocab (and have no fallback), sorted, each once."""
        return [] if self.fallback is not None else sorted(set(text) - self.index.keys())
