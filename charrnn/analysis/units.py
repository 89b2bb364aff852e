"""Reading single units: every unit's value at every character of a text, and how well each follows a signal.

A unit is one of the H values of one layer's state: for an LSTM its cell state, read as tanh(c) so that it lies
in [-1, 1] like the rest, or its hidden state h; for a GRU or an RNN its hidden state h. A character's value is
the unit's value once the model has read that character (so the first character already has one), and the
character's logits are the model's prediction of the character after it.

Values are recorded by the fused sampling step (model/steps.py) at batch 1, one character at a time, copied out after
every step: exactly what sampling computes. The text goes through in blocks of CHUNK characters with the state
carried, so only a block's values are ever held for every unit: texts of any length work in bounded memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn import cores
from charrnn.errors import UsageError
from charrnn.model.rnn import CELLS, CharRNN
from charrnn.model.steps import step_for

CHUNK = 1024  # characters per recorded block: bounds the (CHUNK, layers H) arrays held at once
STATES = ("cell", "hidden")  # cell: tanh(c), for a cell type with a cell state (rnn.CELLS); hidden: h
CONSTANT_VAR = 1e-14  # a unit or signal whose variance per character is at most this counts as constant: r = 0
BINS = 1024  # levels at which rank correlation ranks a unit's values in [-1, 1]: values within 2/BINS may tie


@dataclass(frozen=True)
class Unit:
    layer: int  # from 0
    index: int  # from 0
    state: str  # "cell" or "hidden"

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"


@dataclass
class Block:
    """The next n characters' recording."""

    hidden: np.ndarray  # (n, layers H) float32: h; column layer * H + index
    cell: np.ndarray | None  # (n, layers H) float32: tanh(c); None for a cell type without a cell state
    logits: torch.Tensor  # (n, V) float32: each character's prediction of the next one

    def of(self, state: str) -> np.ndarray:
        return self.cell if state == "cell" else self.hidden


def parse(spec: str) -> tuple[int, int]:
    """--unit LAYER:INDEX -> (layer, index); the ranges are checked once the model is loaded (check_units)."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not m:
        raise UsageError(f"--unit {spec!r}: expected LAYER:INDEX, two numbers counted from 0, e.g. --unit 0:17")
    return int(m[1]), int(m[2])


def states_of(model: CharRNN, state: str | None) -> tuple[str, ...]:
    """The states --state asks for (None: every state the cell has, cell first); cell on a cell type without a
    cell state (GRU, RNN) is a usage error."""
    has = tuple(s for s in STATES if s in model.kind.states)
    if state is not None and state not in has:
        raise UsageError(f"--state {state}: this model is a {model.cfg.cell}, whose only state is hidden (cell is "
                         f"{' and '.join(c for c, k in CELLS.items() if 'cell' in k.states)} only)")
    return (state,) if state is not None else has


def check_units(model: CharRNN, pairs: list[tuple[int, int]], state: str | None) -> list[Unit]:
    """Units for --unit values (layer, index), each in the model's range; --state None: cell for an LSTM, else
    hidden."""
    layers, H = model.cfg.num_layers, model.cfg.hidden_size
    chosen = states_of(model, state)[0]
    for layer, index in pairs:
        if layer >= layers:
            raise UsageError(f"--unit {layer}:{index}: no layer {layer}; this model's layers are 0 to {layers - 1}")
        if index >= H:
            raise UsageError(f"--unit {layer}:{index}: no unit {index}; each layer's units are 0 to {H - 1}")
    return [Unit(layer, index, chosen) for layer, index in pairs]


def all_units(model: CharRNN, states: tuple[str, ...]) -> list[Unit]:
    """Every unit of the given states, in the column order of Correlation: state, then layer, then index."""
    L, H = model.cfg.num_layers, model.cfg.hidden_size
    return [Unit(layer, index, s) for s in states for layer in range(L) for index in range(H)]


@torch.no_grad()
def record(model: CharRNN, ids: np.ndarray, device: torch.device, chunk: int | None = None) -> Iterator[Block]:
    """Blocks of at most chunk characters covering ids (N,) in order, from the zero state, state carried."""
    chunk = chunk or CHUNK
    model.eval()
    L, H, V = model.cfg.num_layers, model.cfg.hidden_size, model.cfg.vocab_size
    has_cell = "cell" in model.kind.states
    step = step_for(model, model.init_state(1, device))
    x = torch.as_tensor(ids.astype(np.int64), device=device).view(-1, 1)  # (N, 1): x[t] is step t's (1,) input
    hidden = torch.empty(chunk, L, H, device=device)  # (chunk, L, H)
    cell = torch.empty(chunk, L, H, device=device) if has_cell else None  # (chunk, L, H): c, tanh taken per block
    logits = torch.empty(chunk, V, device=device)  # (chunk, V)
    for start in range(0, len(ids), chunk):
        n = min(chunk, len(ids) - start)
        for t in range(n):
            cores.tick()
            logits[t] = step(x[start + t])[0]
            now = step.now()  # each (L, H): hidden, then cell
            hidden[t] = now[0]
            if has_cell:
                cell[t] = now[1]
        yield Block(hidden[:n].reshape(n, L * H).cpu().numpy().copy(),
                    torch.tanh(cell[:n]).reshape(n, L * H).cpu().numpy() if has_cell else None,
                    logits[:n].float().cpu().clone())


class Correlation:
    """Pearson correlation of many units with one signal over a whole text, fed block by block: the units'
    means and squared deviations are merged across blocks (Chan, Golub and LeVeque), the signal is centred once.
    A unit or a signal that is constant gets 0, never NaN."""

    def __init__(self, signal: np.ndarray):
        y = np.asarray(signal, dtype=np.float64)  # (N,)
        self.yc = y - y.mean() if len(y) else y  # (N,) centred signal
        self.syy = float(self.yc @ self.yc)
        self.n, self.mean, self.m2, self.sxy = 0, None, None, None  # sxy: sum of x times the centred signal

    def add(self, x: np.ndarray) -> None:
        """x (n, U): the units' values at the next n characters."""
        x = x.astype(np.float64)  # (n, U)
        n = len(x)
        if n == 0:
            return
        mean = x.mean(0)  # (U,)
        m2 = ((x - mean) ** 2).sum(0)  # (U,)
        sxy = self.yc[self.n : self.n + n] @ x  # (U,)
        if self.mean is None:
            self.mean, self.m2, self.sxy = mean, m2, sxy
        else:
            delta, total = mean - self.mean, self.n + n
            self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
            self.mean = self.mean + delta * (n / total)
            self.sxy = self.sxy + sxy
        self.n += n

    def result(self) -> np.ndarray:
        """(U,) correlations in [-1, 1]."""
        if self.mean is None:
            return np.zeros(0)
        cov = self.sxy - self.mean * self.yc[: self.n].sum()  # (U,): the sum of the centred signal is ~0
        flat = (self.m2 <= CONSTANT_VAR * self.n) | (self.syy <= CONSTANT_VAR * self.n)  # (U,)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(self.m2 * self.syy)
        return np.clip(np.where(flat, 0.0, r), -1.0, 1.0)


def mean_ranks(y: np.ndarray) -> np.ndarray:
    """(N,) ranks of y from 1, equal values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


class RankCorrelation:
    """Spearman's rank correlation of many units with one signal over a whole text, fed block by block.

    The signal's ranks are known at the start; a unit's values, which lie in [-1, 1], are ranked by BINS bins
    of equal width: per unit and bin, the count of values and the sum of the signal's centred ranks at them.
    At the end a bin's values take the mean rank of the bin, so memory stays (U, BINS) whatever the length.
    Values closer than a bin's width (about 0.002) may tie: a difference no colour shows, as between the
    values of a unit saturated near -1 or +1, ranks nothing. A unit or a signal that is constant gets 0."""

    def __init__(self, signal: np.ndarray):
        ranks = mean_ranks(np.asarray(signal, dtype=np.float64))  # (N,)
        self.yr = ranks - ranks.mean() if len(ranks) else ranks  # (N,) centred
        self.n, self.count, self.sums = 0, None, None

    def add(self, x: np.ndarray) -> None:
        """x (n, U): the units' values at the next n characters."""
        n, U = x.shape
        bins = np.clip(((x.astype(np.float64) + 1) * (BINS / 2)).astype(np.int64), 0, BINS - 1)  # (n, U)
        flat = (bins + np.arange(U) * BINS).ravel()  # (n U,): unit u's bin b at u BINS + b
        count = np.bincount(flat, minlength=U * BINS).reshape(U, BINS)
        sums = np.bincount(flat, np.repeat(self.yr[self.n : self.n + n], U), U * BINS).reshape(U, BINS)
        self.count = count if self.count is None else self.count + count
        self.sums = sums if self.sums is None else self.sums + sums
        self.n += n

    def result(self) -> np.ndarray:
        """(U,) rank correlations in [-1, 1]."""
        if self.count is None:
            return np.zeros(0)
        rank = np.cumsum(self.count, 1) - (self.count - 1) / 2 - (self.n + 1) / 2  # (U, BINS) centred mean ranks
        cov, var = (rank * self.sums).sum(1), (self.count * rank**2).sum(1)  # (U,) each
        syy = float(self.yr[: self.n] @ self.yr[: self.n])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(var * syy)
        return np.clip(np.where((var <= 0) | (syy <= 0), 0.0, r), -1.0, 1.0)


def rank(model: CharRNN, ids: np.ndarray, signal: np.ndarray, states: tuple[str, ...], device: torch.device,
         chunk: int | None = None) -> list[tuple[Unit, float, float]]:
    """Every unit of the given states with its rank correlation (Spearman's) and its Pearson correlation to the
    signal over the whole text, by |rank correlation| descending (ties: state, layer, index order).

    Units are ranked by rank correlation because a unit is bounded and a count (line position, indent,
    bracket depth) is not: a unit that follows a count saturates or moves in steps, which Pearson's r reads as
    a weaker relation; rank correlation scores any relation in which the unit rises with the signal."""
    parts = {s: (RankCorrelation(signal), Correlation(signal)) for s in states}
    for block in record(model, ids, device, chunk):
        for s, pair in parts.items():
            for part in pair:
                part.add(block.of(s))
    rho, r = (np.concatenate([parts[s][k].result() for s in states]) for k in (0, 1))  # each (U,), all_units order
    order = np.argsort(-np.abs(rho), kind="stable")
    units = all_units(model, states)
    return [(units[i], float(rho[i]), float(r[i])) for i in order]


def table(ranked: list[tuple[Unit, float, float]], top: int, wanted: list[Unit] = ()) -> list[str]:
    """--find's table: a header, then unit, state, rank correlation and Pearson's r, one unit a line: the top units
    of the ranking, then each wanted unit (--unit) not among them, with its place in the ranking."""
    place = {u: i for i, (u, _, _) in enumerate(ranked)}
    rows = [f"{u!s:<9}{u.state:<8}{rho:<+10.4f}{r:+.4f}" for u, rho, r in ranked[:top]]
    for u in dict.fromkeys(wanted):
        if place[u] >= top:
            _, rho, r = ranked[place[u]]
            rows.append(f"{u!s:<9}{u.state:<8}{rho:<+10.4f}{r:+.4f}  (ranked {place[u] + 1} of {len(ranked)})")
    return [f"{'unit':<9}{'state':<8}{'spearman':<10}pearson", *rows]


@dataclass
class Recording:
    """What rendering needs: the chosen units' values and the five likeliest next characters, per character."""

    values: np.ndarray  # (n, K) float32: column k is units[k]
    top_ids: np.ndarray  # (n, 5) int64: the likeliest next characters, likeliest first
    top_probs: np.ndarray  # (n, 5) float32: their probabilities


def collect(model: CharRNN, ids: np.ndarray, units: list[Unit], device: torch.device,
            chunk: int | None = None) -> Recording:
    """Recording of the units over all of ids (give only the part to render)."""
    H = model.cfg.hidden_size
    values, top_ids, top_probs = [], [], []
    for block in record(model, ids, device, chunk):
        values.append(np.stack([block.of(u.state)[:, u.layer * H + u.index] for u in units], axis=1))  # (n, K)
        top = torch.softmax(block.logits, dim=-1).topk(min(5, block.logits.shape[1]), dim=-1)  # each (n, 5)
        top_ids.append(top.indices.numpy())
        top_probs.append(top.values.numpy())
    if not values:
        return Recording(np.zeros((0, len(units)), np.float32), np.zeros((0, 5), np.int64),
                         np.zeros((0, 5), np.float32))
    return Recording(np.concatenate(values), np.concatenate(top_ids), np.concatenate(top_probs))
