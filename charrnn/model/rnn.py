"""CharRNN: Embedding -> nn.RNN | nn.GRU | nn.LSTM -> Dropout -> Linear, and CELLS, the one registry of what differs
between the cell types. The model, the fused step (steps.py) and the unit recorder (analysis/units.py) read
these facts from the registry; a cell type's own arithmetic is a method of FusedStep named after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from charrnn.config import GATES, ModelConfig

State = tuple[torch.Tensor, ...]  # one tensor per name in the cell's states, each (num_layers, B, H)


@dataclass(frozen=True)
class Cell:
    module: type[nn.RNNBase]  # torch's fused recurrent module (cuDNN on a GPU)
    gates: int  # gate blocks in a layer's weights: W_ih is (gates H, E or H), in torch's block order
    states: tuple[str, ...]  # the state tensors it carries, in torch's order: hidden (h), then cell (c) if any
    fused_order: tuple[int, ...]  # gate blocks as the fused step lays them out: sigmoid gates first
    sigmoid_gates: int  # how many of those come first and take a sigmoid; the rest take a tanh
    hidden_apart: bool  # the fused step keeps W_hh h apart from W_ih x (GRU: its candidate scales it by r)


CELLS = {
    "lstm": Cell(nn.LSTM, GATES["lstm"], ("hidden", "cell"), (0, 1, 3, 2), 3, False),  # i f g o -> i f o | g
    "gru": Cell(nn.GRU, GATES["gru"], ("hidden",), (0, 1, 2), 2, True),  # r z | n
    "rnn": Cell(nn.RNN, GATES["rnn"], ("hidden",), (0,), 0, False),  # | h = tanh(...)
}


class CharRNN(nn.Module):
    def __init__(self, cfg: ModelConfig, init: bool = True):
        """init=False leaves the embedding uninitialised, for a model that a checkpoint fills (under the meta
        device, its normal_ init would import torch._dynamo, seconds of start-up for nothing)."""
        super().__init__()
        self.cfg, self.kind = cfg, CELLS[cfg.cell]
        empty = None if init else torch.empty(cfg.vocab_size, cfg.embed_size)  # (V, E)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size, _weight=empty)
        self.rnn = self.kind.module(
            cfg.embed_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        shape = (self.cfg.num_layers, batch_size, self.cfg.hidden_size)  # (layers, B, H)
        return tuple(torch.zeros(shape, device=device) for _ in self.kind.states)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T) ids -> logits (B, T, V) and the state after the last character.

        T = 1 is the step-by-step path used for sampling."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        emb = self.embed(x)  # (B, T, E)
        single = len(state) == 1  # nn.GRU and nn.RNN take and give h alone, nn.LSTM the pair (h, c)
        out, new = self.rnn(emb, state[0] if single else state)  # out (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, ((new,) if single else tuple(new))


def cat_states(states: list[State]) -> State:
    """States of several batches side by side: each (layers, B1 + B2 + ..., H)."""
    return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))


def detach(state: State) -> State:
    """Cut the graph between windows (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
