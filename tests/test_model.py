"""CharRNN: shapes, and carried state (two halves with the state carried == one pass) for every cell."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.model.rnn import CharRNN, detach, num_params

CELLS = ["lstm", "gru", "rnn"]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ATOL, RTOL = 1e-6, 1e-5


def make(cell: str, vocab: int = 11, embed: int = 8, hidden: int = 16, layers: int = 2, dropout: float = 0.3):
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, vocab_size=vocab, embed_size=embed, hidden_size=hidden, num_layers=layers,
                      dropout=dropout)
    return CharRNN(cfg).eval()


def ids(b: int, t: int, vocab: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (b, t), generator=torch.Generator().manual_seed(seed))  # (B, T)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes(cell, layers):
    model = make(cell, layers=layers)
    x = ids(3, 7)
    logits, state = model(x)
    assert logits.shape == (3, 7, 11)  # (B, T, V)
    assert isinstance(state, tuple)
    assert len(state) == (2 if cell == "lstm" else 1)  # LSTM: (h, c); GRU, RNN: (h,)
    for s in state:
        assert s.shape == (layers, 3, 16)  # (layers, B, H)
    init = model.init_state(3)
    assert len(init) == len(state)
    assert all(s.shape == (layers, 3, 16) and not s.any() for s in init)


@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_two_halves_with_carried_state_equal_one_pass(cell):
    model = make(cell)
    x = ids(4, 40)
    full, full_state = model(x)
    first, state = model(x[:, :17])
    second, end_state = model(x[:, 17:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), full, atol=ATOL, rtol=RTOL)
    for a, b in zip(end_state, full_state, strict=True):
        assert torch.allclose(a, b, atol=ATOL, rtol=RTOL)
    # the carried state matters: starting the second half from zeros gives different outputs
    fresh, _ = model(x[:, 17:])
    assert not torch.allclose(fresh, full[:, 17:], atol=1e-3)


@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_step_by_step_equals_one_pass(cell):
    """The sampling path: one character at a time, state carried, gives the same logits as the fused pass."""
    model = make(cell)
    x = ids(2, 25)
    full, _ = model(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = model(x[:, t : t + 1], state)  # (B, 1, V)
        assert logits.shape == (2, 1, 11)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_explicit_zero_state_equals_no_state(cell):
    model = make(cell)
    x = ids(3, 9)
    a, _ = model(x)
    b, _ = model(x, model.init_state(3))
    assert torch.allclose(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_with_gradients_and_detach(cell):
    """Truncated BPTT: detach keeps the values but cuts the graph, so the next window backpropagates alone."""
    model = make(cell)
    model.train()
    torch.manual_seed(3)
    x = ids(2, 12)
    _, state = model(x[:, :6])
    assert all(s.requires_grad for s in state)
    cut = detach(state)
    assert all(not s.requires_grad for s in cut)
    assert all(torch.equal(a, b) for a, b in zip(cut, state, strict=True))
    logits, _ = model(x[:, 6:], cut)
    logits.sum().backward()  # would fail if the graph of the first window had been freed and still linked
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(cell):
    model = make(cell, dropout=0.5)
    x = ids(2, 10)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(5)
        c, _ = model(x)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_parameter_count(cell, layers):
    v, e, h = 11, 8, 16
    model = make(cell, vocab=v, embed=e, hidden=h, layers=layers)
    g = GATES[cell]
    rnn = g * (h * e + h * h + 2 * h) + (layers - 1) * g * (h * h + h * h + 2 * h)
    assert num_params(model) == v * e + rnn + h * v + v


def test_the_cell_registry_and_the_settings_name_the_same_cells():
    """config.CELLS (what --cell accepts, checked without importing torch) lists the registry's cell types."""
    from charrnn import config
    from charrnn.model.rnn import CELLS

    assert tuple(CELLS) == config.CELLS
