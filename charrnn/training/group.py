"""The processes of a torchrun launch: this process's Place in it (from torchrun's environment), and the Group
of processes with the collectives charrnn runs on it (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from charrnn import device as devices
from charrnn.console import console
from charrnn.errors import CharrnnError, UsageError

TIMEOUT = datetime.timedelta(minutes=15)  # longest wait for another process (rank 0 building the corpus cache or
# writing a checkpoint) before a collective fails and the run ends with an error instead of hanging


class Place:
    """This process's place in the launch, from torchrun's environment."""

    def __init__(self):
        env = os.environ
        self.rank, self.world = int(env["RANK"]), int(env["WORLD_SIZE"])
        self.local_rank, self.local_world = int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's streams [lo, hi) of n (equal shards when the world size divides n)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def device(self, name: str) -> torch.device:
        """--device under torchrun: cuda:LOCAL_RANK when CUDA is asked for or auto finds it, else the CPU."""
        if name == "mps":
            raise UsageError("--device mps cannot train under torchrun (torch.distributed has no mps backend); "
                             "use --device cpu, or train in one process")
        if name in ("auto", "cuda") and torch.cuda.is_available():
            if self.local_world > torch.cuda.device_count():  # every process here says so, rank 0's included
                raise UsageError(f"torchrun started {self.local_world} processes on this machine, which has "
                                 f"{torch.cuda.device_count()} GPUs; give --nproc-per-node "
                                 f"{torch.cuda.device_count()} (one process per GPU)")
            return torch.device("cuda", self.local_rank)
        return devices.pick("cpu" if name == "auto" else name)

    def check_batch(self, batch_size: int, resume: bool, directory) -> None:
        if batch_size % self.world == 0:
            return
        if resume:
            raise UsageError(f"{directory} trains {batch_size} streams, which {self.world} processes cannot share "
                             f"evenly; resume it with a number of processes that divides {batch_size}")
        fit = -(-batch_size // self.world) * self.world
        raise UsageError(f"--batch-size {batch_size} cannot be split evenly over {self.world} processes; give a "
                         f"multiple of {self.world} (e.g. --batch-size {fit}) or another --nproc-per-node")


class Group:
    """The process group, and the collectives charrnn runs on it (tensors travel on the training device)."""

    def __init__(self, place: Place, device: torch.device):
        self.place, self.device = place, device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                    device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as e:  # the rendezvous failed: a store that does not answer, a timeout
            cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CharrnnError(f"cannot join the process group of this torchrun launch (rank {place.rank} of "
                               f"{place.world}): {cause[:200]}; start every process again") from None

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's t (same shape on each), in rank order, on the CPU."""
        t = t.contiguous().to(self.device)
        out = [torch.empty_like(t) for _ in range(self.place.world)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        t = t.to(self.device)
        dist.all_reduce(t, op=op)
        return t

    @contextlib.contextmanager
    def agreed(self):
        """A stage every process finishes before any goes on: if one fails, all stop, and the lowest failing
        rank says why (the others exit with its code, quietly)."""
        failure = None
        try:
            yield
        except CharrnnError as e:
            failure = e
        codes = [int(c) for c in self.gather(torch.tensor([failure.exit_code if failure else 0]))]
        failed = [r for r, c in enumerate(codes) if c]
        if not failed:
            return
        if failed[0] == self.place.rank:
            console.quiet = False
            raise failure
        raise quiet(codes[failed[0]])

    def first_to_report(self) -> bool:
        """Whether this process is the first of the run to report a failure (asked of torchrun's store, which
        outlives the workers; if it cannot be reached, every process reports)."""
        try:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=datetime.timedelta(seconds=5))
            return store.add(f"charrnn/failed/{os.environ.get('TORCHELASTIC_RUN_ID', '')}", 1) == 1
        except (RuntimeError, KeyError, ValueError):
            return True


def quiet(code: int) -> CharrnnError:
    """An error that says nothing (another process said it) and exits with code."""
    e = CharrnnError("")
    e.exit_code = code
    return e
