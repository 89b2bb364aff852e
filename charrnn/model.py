"""CharRNN: Embedding -> nn.RNN | nn.GRU | nn.LSTM -> Dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from charrnn.config import ModelConfig

State = tuple[torch.Tensor, ...]  # LSTM: (h, c); GRU and RNN: (h,); each (num_layers, B, H)

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, cfg: ModelConfig, init: bool = True):
        """init=False leaves the embedding uninitialised, for a model that a checkpoint fills (under the meta
        device, its normal_ init would import torch._dynamo, seconds of start-up for nothing)."""
        super().__init__()
        self.cfg = cfg
        empty = None if init else torch.empty(cfg.vocab_size, cfg.embed_size)  # (V, E)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size, _weight=empty)
        self.rnn = RNNS[cfg.cell](
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
        n = 2 if self.cfg.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(n))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T) ids -> logits (B, T, V) and the state after the last character.

        T = 1 is the step-by-step path used for sampling."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        emb = self.embed(x)  # (B, T, E)
        out, new = self.rnn(emb, state if self.cfg.cell == "lstm" else state[0])  # out (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, (new if self.cfg.cell == "lstm" else (new,))


def detach(state: State) -> State:
    """Cut the graph between windows (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
