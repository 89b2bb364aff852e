"""Read a corpus (file or '-' for stdin), validate it as UTF-8 text, encode it, split it."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.vocab import Vocab

BINARY_SNIFF = 8000  # a NUL byte in this many leading bytes marks a binary file
BOM = "\ufeff"


@dataclass
class Corpus:
    name: str  # file name, or "stdin"
    vocab: Vocab
    ids: np.ndarray  # (N,) character ids, N = number of characters
    fingerprint: str  # "sha256:<hex>" of the raw bytes

    def split(self, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous (train, val): the last val_frac of the text is validation."""
        n_val = int(len(self.ids) * val_frac)
        return self.ids[: len(self.ids) - n_val], self.ids[len(self.ids) - n_val :]


def read_bytes(source: str) -> tuple[str, bytes]:
    if source == "-":
        return "stdin", sys.stdin.buffer.read()
    path = Path(source)
    if path.is_dir():
        raise CharrnnError(f"{source} is a directory; give a text file (or '-' for stdin)")
    try:
        return path.name, path.read_bytes()
    except FileNotFoundError:
        raise CharrnnError(f"no such file: {source}; check the path (or use '-' to read stdin)") from None
    except OSError as e:
        raise CharrnnError(f"cannot read {source}: {e.strerror}") from None


def decode(name: str, data: bytes) -> str:
    """UTF-8 bytes -> text; binary files and invalid UTF-8 are errors naming where."""
    if b"\x00" in data[:BINARY_SNIFF]:
        raise CharrnnError(f"{name} looks like a binary file (NUL byte at offset {data.index(0)}); "
                           "give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharrnnError(f"{name} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}; "
                           "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    return text[1:] if text.startswith(BOM) else text


def load(source: str) -> Corpus:
    name, data = read_bytes(source)
    text = decode(name, data)
    if not text:
        raise CharrnnError(f"{name} is empty; give a text file with some characters in it")
    vocab = Vocab.from_text(text)
    return Corpus(name, vocab, vocab.encode(text), "sha256:" + hashlib.sha256(data).hexdigest())
