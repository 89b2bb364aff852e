"""charrnn's AdamW against torch.optim.AdamW, and what the commands import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import TINY

from charrnn.training.adamw import AdamW


def gru() -> torch.nn.GRU:
    torch.manual_seed(0)
    return torch.nn.GRU(5, 7, 2)


def steps(model: torch.nn.Module, optimizer, first: int, last: int) -> None:
    """Training steps first..last-1 with a decaying lr, clipping and some gradient-free parameter."""
    for step in range(first, last):
        torch.manual_seed(100 + step)
        x = torch.randn(4, 3, 5)  # (T, B, E)
        optimizer.param_groups[0]["lr"] = 6e-3 * (1 - step / 40)
        optimizer.zero_grad(set_to_none=True)
        model(x)[0].pow(2).sum().backward()
        if step % 7 == 3:  # a parameter without a gradient this step is left alone, as torch does
            model.bias_hh_l1.grad = None
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.1])
def test_the_same_parameters_as_torch_adamw_bit_for_bit(weight_decay):
    a, b = gru(), gru()
    steps(a, torch.optim.AdamW(a.parameters(), lr=6e-3, weight_decay=weight_decay), 0, 25)
    steps(b, AdamW(b.parameters(), lr=6e-3, weight_decay=weight_decay), 0, 25)
    assert same(a, b)
    assert not same(a, gru())  # the steps moved the weights


def test_state_moves_between_the_two_either_way():
    """Halfway, each optimizer's state goes into the other kind; both go on exactly as one that never stopped."""
    ref, ours, theirs = gru(), gru(), gru()
    steps(ref, torch.optim.AdamW(ref.parameters(), lr=6e-3), 0, 20)
    o1, t1 = AdamW(ours.parameters(), lr=6e-3), torch.optim.AdamW(theirs.parameters(), lr=6e-3)
    steps(ours, o1, 0, 10)
    steps(theirs, t1, 0, 10)
    o2, t2 = torch.optim.AdamW(ours.parameters(), lr=6e-3), AdamW(theirs.parameters(), lr=6e-3)
    o2.load_state_dict(o1.state_dict())
    t2.load_state_dict(t1.state_dict())
    steps(ours, o2, 10, 20)
    steps(theirs, t2, 10, 20)
    assert same(ref, ours) and same(ref, theirs)


def test_train_and_sample_never_import_torch_dynamo(corpus, tmp_path):
    """torch.optim imports torch._dynamo at its first step (seconds of start-up); no command needs it."""
    script = (
        "import sys; from charrnn.cli import app\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        app(args.split('|'), prog_name='charrnn')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print('torch._dynamo imported:', 'torch._dynamo' in sys.modules, file=sys.stderr)\n")
    train = "|".join(["train", str(corpus), *TINY, "--max-steps", "3", "--eval-every", "2", "--out", str(tmp_path)])
    sample = "|".join(["sample", str(tmp_path / "tiny"), "-n", "20"])
    out = subprocess.run([sys.executable, "-c", script, train, sample], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1] == "torch._dynamo imported: False"
