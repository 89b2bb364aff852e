"""Sampling items (`charrnn sample --items N`): each item started fresh after the separator and ended by it, marked
new or a copy of a training or held-out item (the run's item memory, data/items.py), new-only and unique kept
on demand, and what was drawn summed up on stderr."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.config import MAX_SAMPLES, SampleConfig
from charrnn.console import counted, info, warn
from charrnn.data import items
from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.generation.sample import blocks, generate_batch
from charrnn.model.files import load_chosen
from charrnn.model.rnn import CharRNN

GOLDEN = 0x9E3779B97F4A7C15  # the seed of round r is seed + r * GOLDEN (mod 2**64): rounds never share a seed


@dataclass
class Wanted:
    count: int  # items to write
    separator: str | None  # --item-separator; None: the run's own
    new_only: bool  # write only items that are no copy of a training or held-out item
    unique: bool  # write each item once
    mark: bool  # a column before each item: new, train or held-out
    max_draws: int  # give up after drawing this many samples (0: 100 per item wanted)


@dataclass
class Tally:
    drawn: Counter = dataclasses.field(default_factory=Counter)  # mark -> items drawn
    repeats: int = 0  # items dropped by --unique
    written: int = 0  # items written
    unfinished: int = 0  # samples that reached --length without the separator
    empty: int = 0  # samples that were the separator alone

    @property
    def total(self) -> int:
        return sum(self.drawn.values()) + self.unfinished + self.empty

    def summary(self, wanted: Wanted, memory: bool) -> str:
        said = [f"drew {counted(self.total, 'item')}, wrote {self.written:,}"]
        if memory:
            copies = self.drawn["train"]
            said.append(f"{self.drawn['new']:,} new, {copies:,} {'copy' if copies == 1 else 'copies'} of training "
                        f"items, {self.drawn['held-out']:,} of held-out items")
        if wanted.unique:
            said.append(f"{counted(self.repeats, 'repeat')} dropped")
        if self.unfinished:
            said.append(f"{self.unfinished:,} ran past --length without ending")
        if self.empty:
            said.append(f"{self.empty:,} empty")
        return "; ".join(said)


def rounds(model: CharRNN, vocab: Vocab, cfg: SampleConfig, separator: str, device: torch.device, precision: str,
           batch: Iterator[int]) -> Iterator[str | None]:
    """Items drawn in rounds of batch's sizes, each round one batch, in sample order: an item's text, or None for
    a sample that reached --length without ending."""
    for r, n in enumerate(batch):
        round_cfg = dataclasses.replace(cfg, prime=separator, stop=separator, num_samples=n,
                                        length=cfg.length + len(separator),  # --length: the item's own
                                        seed=(cfg.seed + r * GOLDEN) % (1 << 64))
        texts = [[] for _ in range(n)]
        for i, ch in generate_batch(model, vocab, round_cfg, round_cfg.seed, device, precision=precision):
            if ch is not None:
                texts[i].append(ch)
        for parts in texts:  # a sample that stopped at the separator ends with it (stop is the separator)
            text = "".join(parts)
            yield text[: -len(separator)] if text.endswith(separator) else None


def sizes(wanted: Wanted, tally: Tally) -> Iterator[int]:
    """Round sizes: the count asked for (in batches of at most MAX_SAMPLES), then, while items are missing
    (dropped by --new-only or --unique, empty, or unfinished at --length), twice the number missing (at least
    64)."""
    left = wanted.count
    while left > 0:
        yield min(left, MAX_SAMPLES)
        left -= MAX_SAMPLES
    while tally.written < wanted.count:
        yield min(MAX_SAMPLES, max(64, 2 * (wanted.count - tally.written)))


def sample_items(*, checkpoint: Path | None, cfg: SampleConfig, wanted: Wanted, temperatures: list[float],
                 headers: bool, device_name: str, precision: str) -> Iterator[str]:
    """`charrnn sample --items N`: N items per temperature, each followed by the separator (or with a mark column
    before it); the tally of each temperature on stderr."""
    file, model, vocab, meta, device, precision = load_chosen(checkpoint, device_name, precision, "sampling from",
                                                             "sample", min(wanted.count, MAX_SAMPLES))
    separator = wanted.separator or meta["train"].get("item_separator")
    if not separator:
        raise UsageError(f"{file} was not trained with --items; give --item-separator (e.g. '\\n') to sample items "
                         "from it")
    if any(c not in vocab.index for c in separator):
        raise UsageError(f"the model never saw {separator!r}, so its items would never end; give the separator "
                         "its corpus used")
    memory = load_memory(file, separator, wanted)
    for before, block in blocks(cfg, temperatures, headers):
        yield before
        yield from one_temperature(model, vocab, block, separator, device, precision, wanted, memory,
                                   len(temperatures) > 1)


def load_memory(file: Path, separator: str, wanted: Wanted) -> items.Memory | None:
    """The item memory beside the checkpoint, if its run has one for this separator; new-only needs it."""
    path = file.parent / items.MEMORY
    memory = items.load_memory(path) if path.exists() else None
    if memory is not None and memory.separator != separator:
        memory = None
    if memory is None and (wanted.new_only or wanted.mark):
        flag = "--new-only" if wanted.new_only else "--mark"
        raise UsageError(f"{flag} needs the run's item memory ({path}, written by train --items with this "
                         "separator); it is not there")
    return memory


def one_temperature(model: CharRNN, vocab: Vocab, cfg: SampleConfig, separator: str, device: torch.device,
                    precision: str, wanted: Wanted, memory: items.Memory | None, several: bool) -> Iterator[str]:
    """The items written at cfg.temperature, each with its separator (and mark); its tally on stderr (headed by
    the temperature when several)."""
    tally, seen = Tally(), set()
    cap = wanted.max_draws or 100 * wanted.count
    for item in rounds(model, vocab, cfg, separator, device, precision, sizes(wanted, tally)):
        if item:
            mark = memory.mark(vocab.encode(item)) if memory is not None else "new"
            tally.drawn[mark] += 1
            if keep(item, mark, wanted, seen, tally):
                yield (f"{mark}\t" if wanted.mark else "") + item + separator
                tally.written += 1
        else:
            tally.unfinished += item is None
            tally.empty += item == ""
        if tally.written == wanted.count:
            break
        if tally.total >= cap:
            warn(f"gave up after drawing {counted(cap, 'item')} (--max-draws): {tally.written:,} of {wanted.count:,} "
                 "written")
            break
    info(("" if not several else f"temperature {cfg.temperature:g}: ") + tally.summary(wanted, memory is not None))


def keep(item: str, mark: str, wanted: Wanted, seen: set[str], tally: Tally) -> bool:
    """Whether an item is written: new (with --new-only), and not written before (with --unique)."""
    if wanted.new_only and mark != "new":
        return False
    if wanted.unique:
        if item in seen:
            tally.repeats += 1
            return False
        seen.add(item)
    return True
