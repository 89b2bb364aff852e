"""Describing a checkpoint (`charrnn info`): model, vocabulary, corpus, training progress, best validation loss."""

from __future__ import annotations

from pathlib import Path

from charrnn import device as devices
from charrnn.console import nats_bits, printable
from charrnn.data import items
from charrnn.model.files import find_checkpoint, load_model
from charrnn.model.rnn import num_params


def describe(checkpoint: Path | None) -> str:
    path = find_checkpoint(checkpoint)
    model, vocab, meta = load_model(path, devices.pick("cpu"))
    m, p = meta["model"], meta["progress"]
    epoch = meta.get("epoch", p["epoch"])  # fractional: completed passes plus the part of the current one
    preview = "".join(map(shown, vocab.chars[:60]))
    best = "not evaluated yet"
    if p.get("best_val") is not None:
        best = f"{nats_bits(p['best_val'])} at step {p['best_step']}"
    lines = [
        f"checkpoint   {printable(str(path))}",
        f"model        {m['cell']}, {m['num_layers']} layer{'s' * (m['num_layers'] != 1)} x {m['hidden_size']} units, "
        f"embed {m['embed_size']}, dropout {m['dropout']}",
        f"parameters   {num_params(model):,}",
        f"vocabulary   {len(vocab)} characters: {preview}{' ... (all: --vocab)' if len(vocab) > 60 else ''}",
        f"corpus       {printable(meta['corpus']['name'])} ({printable(meta['corpus']['fingerprint'][:19])}...)",
        f"progress     step {p['step']}, epoch {epoch:.2f}, {p['elapsed_s']:.0f} s of training",
        f"best val     {best}",
        *items_line(path, meta),
        *lineage(meta.get("lineage")),
    ]
    return "\n".join(lines) + "\n"


def items_line(path: Path, meta: dict) -> list[str]:
    """An items-mode run's separator and remembered items (data/items.py), if it is one."""
    separator = meta["train"].get("item_separator")
    if not separator:
        return []
    memory = path.parent / items.MEMORY
    if not memory.exists():
        return [f"items        separated by {printable(separator)}; no item memory ({items.MEMORY}) beside it"]
    kept = items.load_memory(memory)
    return [f"items        {len(kept.train) + len(kept.held_out):,} ({len(kept.held_out):,} held out), separated by "
            f"{printable(separator)}; remembered in {items.MEMORY}"]


def lineage(record: dict | None) -> list[str]:
    """The line saying which model a fine-tuning run started from (training/finetune.py), if it did."""
    if record is None:
        return []
    new = record["new"]
    chars = (f"{len(new)} new character{'s' * (len(new) != 1)} "
             f"{'read as U+FFFD (--keep-vocab)' if record['keep_vocab'] else 'added'}: "
             f"{''.join(map(shown, new[:60]))}{' ...' if len(new) > 60 else ''}") if new else "no new characters"
    return [f"started from {printable(record['file'])} (step {record['step']:,}, trained on "
            f"{printable(record['corpus'])}; sha256 {record['sha256'][:16]}...); {chars}"]


def shown(char: str) -> str:
    """A character as itself when printable (a space included); a control character, a whitespace other than the
    space or a backslash as its Python escape (\\n, \\t, \\x85, \\u3000, \\\\), so that one shown character is one
    character of the vocabulary."""
    return "\\\\" if char == "\\" else printable(char)


def vocabulary(checkpoint: Path | None) -> str:
    """`charrnn info --vocab`: index<TAB>character, one line per character of the vocabulary, in its order
    (checkpoints store no character counts)."""
    _, vocab, _ = load_model(find_checkpoint(checkpoint), devices.pick("cpu"))
    return "".join(f"{i}\t{shown(c)}\n" for i, c in enumerate(vocab.chars))
