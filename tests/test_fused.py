"""The fused sampling step computes what the model's own modules compute, and writes exactly the same text."""

from __future__ import annotations

import pytest
import torch
from conftest import cli, train_tiny

from charrnn.config import ModelConfig, SampleConfig
from charrnn.data.vocab import Vocab
from charrnn.device import BF16_ROWS, native_bf16
from charrnn.generation.sample import generate_batch
from charrnn.model import steps as fused
from charrnn.model.rnn import CharRNN
from charrnn.model.steps import FusedStep, ModelStep

VOCAB = Vocab(list("abcdefghij \n.,;:!?XYZ"))


def model(cell: str, layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    m = CharRNN(ModelConfig(cell=cell, vocab_size=len(VOCAB), embed_size=12, hidden_size=24, num_layers=layers,
                            dropout=0.2))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # larger weights: peaked distributions and saturated gates, where mistakes show
    return m.eval()


CELLS = [(cell, layers) for cell in ("lstm", "gru", "rnn") for layers in (1, 2, 3)]


@pytest.mark.parametrize("cell, layers", CELLS)
def test_logits_and_state_match_the_models_modules(cell, layers):
    m = model(cell, layers)
    batch = 5
    state = tuple(torch.randn(layers, batch, 24) for _ in range(2 if cell == "lstm" else 1))
    ref, fast = ModelStep(m, state), FusedStep(m, state)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in range(40):
            ids = torch.randint(len(VOCAB), (batch,), generator=gen)
            torch.testing.assert_close(fast(ids), ref(ids), rtol=1e-5, atol=1e-5)
            if t == 20:  # rows leave the batch as their samples end
                rows = torch.tensor([0, 2, 3])
                ref.keep(rows)
                fast.keep(rows)
                batch = 3
        for a, b in zip(fast.state(), ref.state(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


OPTIONS = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=0.0),
    dict(temperature=1.3, top_k=4),
    dict(temperature=0.9, top_p=0.8),
    dict(temperature=1.0, top_k=6, top_p=0.9, stop="X"),
    dict(temperature=1.0, num_samples=4, stop=". "),
    dict(temperature=0.8, num_samples=3, prime="abc d", length=120),
]


@pytest.mark.parametrize("cell, layers", [("lstm", 2), ("gru", 2), ("rnn", 2), ("lstm", 1), ("gru", 3)])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_the_fused_path_writes_the_same_text(cell, layers, options):
    m = model(cell, layers, seed=layers)
    cfg = SampleConfig(**{"length": 300, **options})
    for seed in (0, 1, 2):
        fast = list(generate_batch(m, VOCAB, cfg, seed, torch.device("cpu"), fast=True))
        slow = list(generate_batch(m, VOCAB, cfg, seed, torch.device("cpu"), fast=False))
        assert fast == slow
        assert sum(ch is not None for _, ch in fast) >= cfg.num_samples  # something was generated


def test_the_cli_takes_the_fused_path(corpus, monkeypatch):
    train_tiny(corpus)
    calls = []
    step = FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, ids: calls.append(1) or step(self, ids))
    fast = cli("sample", "-n", "200", "--seed", "4", "--precision", "fp32")  # auto may pick bf16: not fused
    assert fast.exit_code == 0 and len(calls) == 199  # one step per character after the first
    monkeypatch.setattr(fused, "supported", lambda m: False)
    slow = cli("sample", "-n", "200", "--seed", "4", "--precision", "fp32")
    assert slow.stdout == fast.stdout and len(calls) == 199  # the model's modules, the same text


def test_bf16_sampling_takes_the_fused_step_with_bf16_weights(corpus, monkeypatch):
    train_tiny(corpus)
    made = []
    init = FusedStep.__init__
    monkeypatch.setattr(FusedStep, "__init__",
                        lambda self, m, s, w=torch.float32: made.append(w) or init(self, m, s, w))
    result = cli("sample", "-n", "50", "--seed", "4", "--precision", "bf16", "--device", "cpu")
    if not native_bf16(torch.device("cpu")):  # emulated bf16 is slower, and oneDNN's LSTM refuses it: say so
        assert result.exit_code == 2 and "needs avx512_bf16 or amx_bf16" in result.stderr
        return
    assert result.exit_code == 0 and len(result.stdout) == 50 and made == [torch.bfloat16]


@pytest.mark.parametrize("native", [True, False])
def test_auto_samples_a_large_model_with_bf16_weights_where_bf16_is_native(corpus, monkeypatch, native):
    """device.BF16_BYTES through the CLI: an LSTM 2x512 (12 MiB of recurrent matrices) samples one row with bf16
    weights where bf16 is native (the hardware's answer faked both ways), with fp32 ones elsewhere. The prime's
    warm-up runs the modules in bf16, which oneDNN refuses on a CPU without native bf16: there only the fp32 side
    runs through the CLI (test_precision fakes both for the choice itself)."""
    import charrnn.device

    if native and not native_bf16(torch.device("cpu")):
        pytest.skip("the modules' bf16 warm-up needs native bf16")
    train_tiny(corpus, "--cell", "lstm", "--hidden-size", "512", "--precision", "fp32", steps=1)
    monkeypatch.setattr(charrnn.device, "native_bf16", lambda device: native)
    made = []
    init = FusedStep.__init__
    monkeypatch.setattr(FusedStep, "__init__",
                        lambda self, m, s, w=torch.float32: made.append(w) or init(self, m, s, w))
    result = cli("sample", "-n", "30", "--seed", "4", "--device", "cpu")
    assert result.exit_code == 0 and len(result.stdout) == 30
    assert made == [torch.bfloat16 if native else torch.float32]


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [1, 4, 33])
@pytest.mark.parametrize("cell, layers", CELLS)
def test_bf16_weights_stay_within_bf16_rounding_of_fp32(cell, layers, rows, packed, monkeypatch):
    """On every CPU (bf16 products run everywhere, emulated where not native): the same steps within bf16's
    rounding of the fp32 ones, and the state still fp32; with oneDNN's packed matrices and without them (a torch
    built without oneDNN); the output layer in fp32 below device.BF16_ROWS rows, in bf16 from there."""
    if not packed:
        monkeypatch.setattr(fused, "LINEAR", None)
    m = model(cell, layers)
    state = tuple(torch.randn(layers, rows, 24) for _ in range(2 if cell == "lstm" else 1))
    ref, fast = FusedStep(m, state), FusedStep(m, state, torch.bfloat16)
    assert isinstance(fast.w_hh[0], fused.Packed) == (packed and fused.packs())
    assert fast.w_out.dtype == (torch.bfloat16 if rows >= BF16_ROWS else torch.float32)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        ids = torch.randint(len(VOCAB), (rows,), generator=gen)
        a, b = fast(ids), ref(ids)
        assert a.dtype == torch.float32 and (a - b).abs().max() < 0.05 * b.abs().max()
    assert all(s.dtype == torch.float32 for s in fast.state())


def test_bf16_output_layer_follows_the_rows_as_they_come_and_go():
    """A server's step is made for one row and grows and shrinks with its requests: the output layer is fp32
    below device.BF16_ROWS rows and bf16 from there, each made once; the logits stay within bf16's rounding."""
    m = model("lstm", 2)
    state = tuple(torch.randn(2, 1, 24) for _ in range(2))
    ref, fast = FusedStep(m, state), FusedStep(m, state, torch.bfloat16)
    ids = torch.zeros(1, dtype=torch.long)
    assert fast.w_out.dtype == torch.float32
    for step in (ref, fast):
        step.allocate(tuple(s.expand(-1, 40, -1) for s in step.state()))  # 1 -> 40 rows
    assert fast.w_out.dtype == torch.bfloat16
    grown = fast.w_out
    a, b = fast(ids.expand(40)), ref(ids.expand(40))
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    for step in (ref, fast):
        step.keep(torch.tensor([3]))  # 40 -> 1
    assert fast.w_out.dtype == torch.float32
    a, b = fast(ids), ref(ids)
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    fast.allocate(tuple(s.expand(-1, 32, -1) for s in fast.state()))
    assert fast.w_out is grown  # made once


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="the modules' bf16 path needs native bf16")
@pytest.mark.parametrize("cell, layers", CELLS)
def test_bf16_weights_stay_within_bf16_rounding_of_the_models_modules_in_bf16(cell, layers):
    """Not bit for bit: under autocast oneDNN's recurrent kernels keep the state in bf16 between characters, the
    fused step keeps it in fp32 (so a near tie between two characters may fall the other way)."""
    m = model(cell, layers)
    state = tuple(torch.randn(layers, 4, 24) for _ in range(2 if cell == "lstm" else 1))
    ref, fast = ModelStep(m, state, "bf16"), FusedStep(m, state, torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        ids = torch.randint(len(VOCAB), (4,), generator=gen)
        a, b = fast(ids), ref(ids)
        assert (a - b).abs().max() < 0.05 * b.abs().max()
