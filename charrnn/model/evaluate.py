"""A model's mean loss over streams in the validation layout: training's validation and `score` both use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from charrnn import cores
from charrnn.data.batches import Streams
from charrnn.device import autocast
from charrnn.model.rnn import CharRNN


def evaluate(model: CharRNN, streams: Streams, device: torch.device, precision: str = "fp32") -> float:
    """Mean loss (nats per character) over every window of streams, state carried, no dropout, then over the
    characters past the streams: every character but the first is predicted exactly once."""
    total, count = evaluate_sums(model, streams, device, precision)
    return total / count


@torch.no_grad()
def evaluate_sums(model: CharRNN, streams: Streams, device: torch.device, precision: str = "fp32") -> tuple[float, int]:
    """(summed loss in nats, characters predicted) over streams, as evaluate reads them."""
    was_training = model.training
    model.eval()
    state, total, count = None, 0.0, 0
    for x, y in streams:
        cores.tick()
        with autocast(device, precision):
            logits, state = model(x.to(device), state)  # (B, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    tail = streams.tail()
    if tail is not None:  # the characters past the streams continue the last one, from its state
        x, y = tail  # (1, R) each
        with autocast(device, precision):
            logits, _ = model(x.to(device), tuple(s[:, -1:].contiguous() for s in state))  # (1, R, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total, count
