"""Describing a checkpoint (`charrnn info`): model, vocabulary, corpus, training progress, best validation loss."""

from __future__ import annotations

from pathlib import Path

from charrnn import device as devices
from charrnn.console import nats_bits, printable
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
    ]
    return "\n".join(lines) + "\n"


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
