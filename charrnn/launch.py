"""How this process was started: alone, or as one process of a torchrun launch; and the command line that
starts it the same way again (the resume command a stopped run prints)."""

from __future__ import annotations

import os


def launched() -> bool:
    """Whether torchrun (or a launcher like it) started this process, as one of a distributed run."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def launcher() -> tuple[str, ...]:
    """The start of a command line that launches charrnn as this process was launched: `charrnn`, or the torchrun
    command line (on every node, for several); `--` keeps torchrun from taking charrnn's --run for its own
    --run-path."""
    if not launched():
        return ("charrnn",)
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if world == local:
        return "torchrun", "--nproc-per-node", str(world), "-m", "charrnn", "--"
    return ("torchrun", "--nnodes", str(world // local), "--nproc-per-node", str(local), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "HOST:PORT", "-m", "charrnn", "--")
