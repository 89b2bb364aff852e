"""Device choice, seeding and mixed precision."""

from __future__ import annotations

import contextlib
import random

import torch

from charrnn.errors import UsageError


def pick(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for one that is absent is a usage error."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has.get(name, False):
        raise UsageError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
