"""Device choice, threads, seeding and precision."""

from __future__ import annotations

import contextlib
import functools
import os
import random

import torch

from charrnn import cores
from charrnn.config import DEVICES, GATES, ModelConfig, check, flag
from charrnn.errors import UsageError
from charrnn.launch import launched


def pick(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for one that is absent is a usage error."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if name not in DEVICES:
        raise UsageError(f"--device {name} is not a device charrnn knows; use one of {', '.join(DEVICES)}")
    if not has.get(name, False):
        raise UsageError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """--threads: torch's intra-op threads; None = the user's OMP_NUM_THREADS if set (but under torchrun, which
    sets it to 1 itself), else the cores available to the process, shared out among the processes torchrun
    started on this machine (LOCAL_WORLD_SIZE). Only that last default adapts to other processes' load (cores.py)
    and only outside torchrun, whose processes share the cores out already."""
    if n is None and not launched() and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    adapt = n is None and not launched()
    n = max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if n is None else n
    check({"threads": n}, flag)
    return cores.start(n, adapt)


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (faster than fp32): CUDA GPUs that support bf16, CPUs with
    avx512_bf16 or amx_bf16. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 is slower than fp32
    return device.type == "cpu" and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


# Where --precision auto trains (and scores) in bf16: per device type, the cells and their smallest hidden size
# for which bf16 was measured both faster than fp32 and as good at equal wall time (bench/quality.log and
# bench/speed.log, 2026-12-04, Intel Xeon with AMX, 1.5-minute runs): the LSTM 2x256 ran 1.57x faster and reached
# 1.4662 nats against 1.5027, the 2x512 1.95x and 1.4879 against 1.6143. The default GRU 2x256 gained 6% and lost
# 0.015 nats over 5 minutes, the GRU 2x512 lost 0.47, the vanilla RNN 2x512 0.48 after 300 steps: fp32 for those
# (their loss comes from training in bf16; a forward pass in bf16 scores as fp32 does). On CUDA (not measured
# here) bf16 stays for the gated cells.
BF16_FROM = {"cpu": {"lstm": 256}, "cuda": {"lstm": 0, "gru": 0}}
# Sampling on a CPU with native bf16 (bench/speed.log, 2026-12-05, Intel Xeon with AMX): the fused step's products
# with bf16 weights (oneDNN's packed linear, model/steps.py) pay from BF16_ROWS rows on, whatever the model, and at
# fewer rows once the recurrent layers' matrices hold BF16_BYTES or more in fp32, where reading half the bytes
# outweighs bf16's fixed cost of about 15 us a product: a step of one row took 249 against 300 us for an LSTM
# 2x512 (12 MiB), 202 against 238 for a GRU 2x512 (9 MiB), 101 against 118 for an LSTM 2x320 (4.7 MiB), but 72
# against 45 for an RNN 2x512 (3 MiB) and 95 against 46 for the default GRU 2x256 (2.25 MiB).
BF16_ROWS = 32
BF16_BYTES = 4 << 20


def recurrent_bytes(model: ModelConfig) -> int:
    """fp32 bytes of the matrices the fused step multiplies in the recurrent layers: layer 0's W_hh (G, H), each
    further layer's W_ih and W_hh (G, 2H together), G = gates x H."""
    H = model.hidden_size
    return 4 * GATES[model.cell] * H * H * (2 * model.num_layers - 1)


def precision(name: str, device: torch.device, path: str = "train", model: ModelConfig | None = None,
              rows: int = 1) -> str:
    """--precision auto|fp32|bf16 (checked by config.RULES) -> fp32 or bf16 for a path (train, score, sample), a
    model (its ModelConfig; None before it is known, where auto answers fp32) and, for sampling, the rows stepped
    together. auto: bf16 where it is native and BF16_FROM lists the model; sampling on the CPU (the fused step,
    model/steps.py) takes bf16 weights from BF16_ROWS rows on, or from BF16_BYTES of recurrent weights, else fp32."""
    if name == "auto":
        if path == "sample" and device.type == "cpu":
            pays = rows >= BF16_ROWS or model is not None and recurrent_bytes(model) >= BF16_BYTES
            return "bf16" if pays and native_bf16(device) else "fp32"
        sizes = BF16_FROM.get(device.type, {})
        pays = model is not None and model.hidden_size >= sizes.get(model.cell, float("inf"))
        return "bf16" if pays and native_bf16(device) else "fp32"
    if name == "bf16" and device.type == "cpu" and not native_bf16(device):  # oneDNN's fused LSTM refuses it
        raise UsageError("--precision bf16 on the CPU needs avx512_bf16 or amx_bf16, which this CPU lacks; use "
                         "--precision fp32 (or auto)")
    return name


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast for matrix products (master weights and optimizer state stay fp32), or full precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can take on device: the GPU's free memory, or the system's MemAvailable; None
    where that cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
