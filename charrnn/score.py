"""Scoring: how well a model predicts a text, in nats and bits per character, whole or line by line."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charrnn.batches import evaluation_streams
from charrnn.console import warn
from charrnn.device import autocast
from charrnn.errors import CharrnnError
from charrnn.model import CharRNN
from charrnn.sources import BINARY_SNIFF, STDIN, BadBytes, binary_file, not_text, not_utf8, open_input
from charrnn.train import evaluate
from charrnn.vocab import Vocab

LN2 = math.log(2)


@dataclass
class Score:
    nats_per_char: float  # mean cross-entropy of the scored characters
    scored: int  # characters whose prediction counts in the mean
    chars: int  # characters in the text, out-of-vocabulary ones included: scored + context + oov
    oov: int  # characters outside the model's vocabulary: skipped, not scored
    oov_chars: list[str]  # those characters, sorted, each once

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)

    @property
    def context(self) -> int:
        """Characters read but not predicted: the first one, which has nothing before it."""
        return self.chars - self.scored - self.oov

    def as_dict(self) -> dict:
        return {"bits_per_char": self.bits_per_char, "nats_per_char": self.nats_per_char,
                "perplexity": self.perplexity, "chars": self.chars, "scored": self.scored,
                "context": self.context, "oov": self.oov, "oov_chars": self.oov_chars}


def drop_unknown(vocab: Vocab, text: str) -> tuple[str, list[str]]:
    """(text without the characters outside the vocab, those characters)."""
    unknown = vocab.unknown(text)
    return (text.translate(dict.fromkeys(map(ord, unknown))) if unknown else text), unknown


def score_text(model: CharRNN, vocab: Vocab, text: str, batch_size: int, seq_len: int,
               device: torch.device, precision: str = "fp32") -> Score:
    """Mean loss over text in the layout of training's validation: min(B, (n-1)//T) contiguous streams,
    windows of T, state carried, so the validation split scores exactly its reported validation loss.
    Every character but the first is predicted (train.evaluate)."""
    kept, unknown = drop_unknown(vocab, text)
    ids = vocab.encode(kept)  # (n,)
    if len(ids) < 2:
        raise CharrnnError(f"nothing to score: the text has {len(ids)} character(s) in the model's vocabulary; "
                           "scoring needs at least 2")
    streams = evaluation_streams(ids, batch_size, seq_len)
    nats = evaluate(model, streams, device, precision)
    return Score(nats, len(ids) - 1, len(text), len(text) - len(kept), unknown)


@dataclass
class LineScore:
    bits_per_char: float  # NaN when nothing in the line could be scored
    scored: int  # characters scored, the line's newline included
    line: str  # the line without its newline
    unknown: list[str]  # characters of the line outside the vocabulary, each once
    oov: int  # how many of the line's characters were outside the vocabulary (skipped)


@torch.no_grad()
def score_lines(model: CharRNN, vocab: Vocab, lines: Iterable[str], device: torch.device,
                precision: str = "fp32") -> Iterator[LineScore]:
    """Each line (newline included) scored on its own, as if it followed a newline: comparable across lines,
    independent of their order. Without a newline in the vocab a line's first character is context only."""
    model.eval()
    newline = vocab.index.get("\n")
    for line in lines:
        kept, unknown = drop_unknown(vocab, line)
        ids = ([newline] if newline is not None else []) + vocab.encode(kept).tolist()
        text = line[:-1] if line.endswith("\n") else line
        if len(ids) < 2:
            yield LineScore(math.nan, 0, text, unknown, len(line) - len(kept))
            continue
        x = torch.tensor([ids[:-1]], device=device)  # (1, T)
        y = torch.tensor(ids[1:], device=device)  # (T,)
        with autocast(device, precision):
            logits, _ = model(x)  # (1, T, V)
        nats = F.cross_entropy(logits[0].float(), y, reduction="mean").item()
        yield LineScore(nats / LN2, len(y), text, unknown, len(line) - len(kept))


def read_lines(source: str, errors: str = "strict") -> Iterator[str]:
    """UTF-8 lines of a file or of stdin ('-'), newline kept, each as soon as it arrives; invalid bytes as
    errors (--encoding-errors) says, with a warning at the end."""
    name = "stdin" if source == STDIN else source
    offset = 0
    bad = BadBytes(errors)
    bad.label = name
    with open_input(source) as lines:
        for number, raw in enumerate(lines, 1):
            if number == 1 and (problem := not_text(name, raw)):  # a UTF-16/32 byte-order mark, or binary
                raise problem[1]
            if offset < BINARY_SNIFF and b"\x00" in raw:
                raise binary_file(name, offset + raw.index(0))
            bad.base = offset
            try:
                line = raw.decode("utf-8", bad.handler)
            except UnicodeDecodeError as e:
                raise not_utf8(name, raw[e.start], offset + e.start, f" (line {number})") from None
            offset += len(raw)
            yield line[1:] if number == 1 and line.startswith("\ufeff") else line
    if bad.count:
        warn(bad.report())
