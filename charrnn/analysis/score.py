"""Scoring: how well a model predicts a text, in nats and bits per character, whole or line by line."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import cores
from charrnn.config import TrainConfig
from charrnn.console import printable, warn
from charrnn.data import items
from charrnn.data.batches import evaluation_streams
from charrnn.data.text import label, read_lines, read_text
from charrnn.data.vocab import Vocab
from charrnn.device import autocast
from charrnn.errors import CharrnnError
from charrnn.model.evaluate import evaluate
from charrnn.model.files import load_chosen
from charrnn.model.rnn import CharRNN

LN2 = math.log(2)
LINE_CHUNK = 4096  # characters of a line fed per forward pass: bounds the (1, T, V) logits of a very long line


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
    Every character but the first is predicted (model/evaluate.py)."""
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
                precision: str = "fp32", line_end: str = "\n") -> Iterator[LineScore]:
    """Each line (its end included) scored on its own, as if it followed a line end: comparable across lines,
    independent of their order. Without the line end in the vocab a line's first character is context only.
    line_end: "\\n", or an item separator (score --items)."""
    model.eval()
    before = torch.from_numpy(vocab.encode(line_end).astype(np.int64)) if not vocab.unknown(line_end) else None  # (S,)
    for line in lines:
        cores.tick()
        kept, unknown = drop_unknown(vocab, line)
        ids = torch.from_numpy(vocab.encode(kept).astype(np.int64))  # (n,)
        if before is not None:
            ids = torch.cat([before, ids])  # (S + n,): as if after a line end
        text = line.removesuffix(line_end)
        if len(ids) < 2:
            yield LineScore(math.nan, 0, text, unknown, len(line) - len(kept))
            continue
        total, state = 0.0, None
        for t in range(0, len(ids) - 1, LINE_CHUNK):  # a line of any length in bounded memory, state carried
            end = min(t + LINE_CHUNK, len(ids) - 1)
            x, y = ids[None, t:end].to(device), ids[t + 1 : end + 1].to(device)  # (1, T) inputs, (T,) targets
            with autocast(device, precision):
                logits, state = model(x, state)  # (1, <=LINE_CHUNK, V)
            total += F.cross_entropy(logits[0].float(), y, reduction="sum").item()
        yield LineScore(total / (len(ids) - 1) / LN2, len(ids) - 1, text, unknown, len(line) - len(kept))


def score(*, sources: list[str], checkpoint: Path | None, device_name: str, precision: str, as_json: bool,
          errors: str, per_line: bool, items_by: str | None = None) -> Iterator[str]:
    """`charrnn score`: what goes to stdout, the whole text's report or one line per input line as each arrives;
    with several files one row each and their total; (items_by: "" for the run's separator) one row per item;
    warnings (characters skipped, bytes replaced) on stderr."""
    _, model, vocab, meta, device, precision = load_chosen(checkpoint, device_name, precision, "scoring with")
    if items_by is not None:
        separator = items_by or meta["train"].get("item_separator") or "\n"
        yield from each_item(model, vocab, sources[0], separator, device, precision, as_json, errors)
        return
    if per_line:
        yield from each_line(model, vocab, sources[0], device, precision, as_json, errors)
        return
    train_cfg = {**dataclasses.asdict(TrainConfig()), **meta["train"]}

    def one(source: str, where: str = "") -> Score:
        _, text, replaced = read_text(source, errors)
        if replaced:
            warn(replaced)
        try:
            result = score_text(model, vocab, text, train_cfg["batch_size"], train_cfg["seq_len"], device, precision)
        except CharrnnError as e:
            raise CharrnnError(f"{where}{e}") from None
        warn_unknown(result.oov_chars, result.oov, where)
        return result

    if len(sources) == 1:
        yield report(one(sources[0]), as_json) + "\n"
        return
    results = []
    if not as_json:
        yield ROW_HEADER
    for source in sources:
        results.append(one(source, f"{printable(label(source))}: "))
        yield row(results[-1], source, as_json)
    yield row(combined(results), None, as_json)


def combined(results: list[Score]) -> Score:
    """The score of several texts together, each scored on its own: the mean over all their scored characters."""
    scored = sum(s.scored for s in results)
    nats = sum(s.nats_per_char * s.scored for s in results) / scored
    return Score(nats, scored, sum(s.chars for s in results), sum(s.oov for s in results),
                 sorted(set().union(*(s.oov_chars for s in results))))


ROW_HEADER = f"{'bits_per_char':>13} {'nats_per_char':>13} {'perplexity':>10} {'chars':>10} {'scored':>10} " \
             f"{'oov':>8}  file\n"


def row(result: Score, source: str | None, as_json: bool) -> str:
    """One file's score among several (source None: their total), as a table row or a JSON line whose "file" is
    the path as given (- for stdin), null for the total."""
    if as_json:
        return json.dumps({"file": source, **result.as_dict()}, ensure_ascii=False) + "\n"
    name = "total" if source is None else printable(source)
    return f"{result.bits_per_char:>13.4f} {result.nats_per_char:>13.4f} {result.perplexity:>10.4f} " \
           f"{result.chars:>10} {result.scored:>10} {result.oov:>8}  {name}\n"


def report(result: Score, as_json: bool) -> str:
    """The score of a whole text, as aligned `name value` lines or as JSON."""
    fields = result.as_dict()
    if as_json:
        return json.dumps(fields, ensure_ascii=False)
    fields["oov_chars"] = repr("".join(result.oov_chars))  # quoted, control characters escaped
    if not result.oov:
        del fields["oov_chars"]
    return "\n".join(f"{k:<14} {v:.4f}" if isinstance(v, float) else f"{k:<14} {v}" for k, v in fields.items())


def each_line(model: CharRNN, vocab: Vocab, source: str, device: torch.device, precision: str, as_json: bool,
              errors: str) -> Iterator[str]:
    """One output line per input line, as each arrives: `bits_per_char<TAB>line`, or JSON Lines."""
    unknown: set[str] = set()
    count, replaced = 0, []
    for s in score_lines(model, vocab, read_lines(source, errors, replaced), device, precision):
        unknown.update(s.unknown)
        count += s.oov
        yield scored_row(s, "line", as_json)
    for line in replaced:
        warn(line)
    warn_unknown(sorted(unknown), count)


def each_item(model: CharRNN, vocab: Vocab, source: str, separator: str, device: torch.device, precision: str,
              as_json: bool, errors: str) -> Iterator[str]:
    """`score --items`: every item of the list scored alone, after the separator and with it (its end counts, as
    in training's validation), likeliest first: `bits_per_char<TAB>item`, or JSON Lines."""
    _, text, replaced = read_text(source, errors)
    if replaced:
        warn(replaced)
    listed = items.text_items(text, separator)
    if not listed:
        raise CharrnnError(f"{printable(label(source))} has no items between {separator!r} separators")
    scores = list(score_lines(model, vocab, (item + separator for item in listed), device, precision, separator))
    for s in sorted(scores, key=lambda s: (math.isnan(s.bits_per_char), s.bits_per_char)):
        yield scored_row(s, "item", as_json)
    warn_unknown(sorted(set().union(*(s.unknown for s in scores))), sum(s.oov for s in scores))


def scored_row(s: LineScore, key: str, as_json: bool) -> str:
    """A line or item's score: `bits_per_char<TAB>text`, or a JSON line whose text is under key."""
    if as_json:
        return json.dumps({"bits_per_char": None if math.isnan(s.bits_per_char) else s.bits_per_char,
                           "scored": s.scored, key: s.line}, ensure_ascii=False) + "\n"
    return f"{s.bits_per_char:.4f}\t{s.line}\n"


def warn_unknown(unknown: list[str], count: int, where: str = "") -> None:
    if unknown:
        warn(f"{where}{count:,} character(s) outside the model's vocabulary skipped, not scored: {''.join(unknown)!r}")
