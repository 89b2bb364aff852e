"""Training under torchrun: DistributedDataParallel over the streams of one batch (gloo on CPU, nccl on CUDA).

The global batch is --batch-size streams; rank r of W trains streams [r B/W, (r+1) B/W) and carries their state,
so a step reads what one process with that batch would. Each rank's loss is the mean over its streams and DDP
averages the gradients: the single-process mean's gradient, clipped alike everywhere. Validation adds up every
rank's losses and counts. Rank 0 alone prints and writes; last.safetensors gathers every rank's carried state
(state.* holds all B streams, as from one process) and generators (rng.rankR.*; rng.torch is rank 0's), so one
process samples, scores or resumes from it, and another number of processes re-shards the streams. Stopping
(any rank's signal, rank 0's clock) and the time-based learning rate are agreed by one all_reduce per step.
This module (and torch.distributed's process group) is only loaded when torchrun started the process.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
import signal

import torch
import torch.distributed as dist

from charrnn import commands, corpus, run
from charrnn import device as devices
from charrnn.console import console, info, warn
from charrnn.errors import CharrnnError, Interrupted, UsageError
from charrnn.train import NonFiniteError, Trainer, evaluate_sums

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

    def launcher(self) -> tuple[str, ...]:
        """The torchrun command line this run resumes with (on every node, for several); `--` keeps torchrun
        from taking charrnn's --run for its own --run-path."""
        if self.world == self.local_world:
            return "torchrun", "--nproc-per-node", str(self.world), "-m", "charrnn", "--"
        return ("torchrun", "--nnodes", str(self.world // self.local_world), "--nproc-per-node",
                str(self.local_world), "--rdzv-backend", "c10d", "--rdzv-endpoint", "HOST:PORT", "-m", "charrnn", "--")

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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)

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


class DistTrainer(Trainer):
    """A Trainer for one rank: its shard of the streams, DDP's averaged gradients, and agreed decisions."""

    def __init__(self, model, cfg, train, val, device, group: Group):
        self.group, self.agreed_signal, self.local_signal = group, 0, 0
        self.running, self.done, self.frac, self.snapshot = False, False, 0.0, {}
        super().__init__(model, cfg, train.rows(*group.place.shard(train.batch_size)),
                         val.rows(*group.place.shard(val.batch_size)), device)
        if group.place.rank:  # rank 0 keeps the single-process generator; the others draw their own dropout
            torch.manual_seed(rank_seed(cfg.seed, group.place.rank))

    def connect(self) -> None:
        """Wrap the model in DDP (which checks that every rank holds the same weights)."""
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device.type == "cuda"
        self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)

    # A signal's request (commands.stop_on_signals sets stop_signal) is honoured once every rank has seen it.
    stop_signal = property(lambda self: self.agreed_signal, lambda self, sig: setattr(self, "local_signal", sig))
    stop_requested = property(lambda self: self.agreed_signal != 0, lambda self, value: None)

    def run(self):
        self.running = True
        try:
            progress = super().run()
            self.done = True  # every rank ended at the same step boundary (the budget, or an agreed stop)
            return progress
        finally:
            self.running = False

    def finished(self) -> bool:
        """At each step boundary, one all_reduce (MAX): any rank's signal; rank 0's clock (its time fraction and
        elapsed time, which the learning rate and the checkpoint use)."""
        if not self.running:  # before training (resume's budget check): the file's figures, alike everywhere
            return super().finished()
        p, lead = self.progress, self.group.place.rank == 0
        mine = torch.tensor([self.local_signal, Trainer.time_frac(self) if lead else 0.0,
                             p.elapsed_s if lead else 0.0], dtype=torch.float64)
        agreed = self.group.reduce(mine, dist.ReduceOp.MAX).tolist()
        self.agreed_signal, self.frac, p.elapsed_s = int(agreed[0]), agreed[1], agreed[2]
        return p.step >= self.total_steps or self.frac >= 1 or self.stop_requested

    def time_frac(self) -> float:
        return self.frac if self.running else super().time_frac()

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of their streams' mean losses: the whole batch's, the same on every rank."""
        return self.group.reduce(loss.float(), dist.ReduceOp.SUM) / self.group.place.world

    def val_loss(self) -> float:
        """Every rank's summed loss and count over its validation streams, added up in rank order."""
        mine = evaluate_sums(self.model, self.val, self.device, self.cfg.precision) if self.val.batch_size else (0, 0)
        sums = self.group.gather(torch.tensor(mine, dtype=torch.float64))  # W x (2,)
        return sum(float(s[0]) for s in sums) / sum(float(s[1]) for s in sums)

    def emit(self, kind: str, **metrics) -> None:
        if kind in ("eval", "save", "end"):  # rank 0 may save last.safetensors: gather what it holds first
            self.snapshot = self.gather_carried()
        super().emit(kind, **metrics)

    def carried(self) -> dict[str, torch.Tensor]:
        return self.snapshot

    def gather_carried(self) -> dict[str, torch.Tensor]:
        """Every rank's carried state joined into all B streams, and every rank's generators."""
        g = self.group
        tensors = {f"state.{i}": torch.cat(g.gather(s), dim=1) for i, s in enumerate(self.state)}  # (layers, B, H)
        rng = g.gather(torch.get_rng_state())  # W x (n,) uint8
        tensors.update({"rng.torch": rng[0].clone(), **{f"rng.rank{r}.torch": t for r, t in enumerate(rng)}})
        if self.device.type == "cuda":
            cuda = g.gather(torch.cuda.get_rng_state(self.device))  # W x (m,) uint8, each rank's own GPU
            tensors.update({"rng.cuda": cuda[0][None], **{f"rng.rank{r}.cuda": t for r, t in enumerate(cuda)}})
        return tensors


def rank_seed(seed: int, rank: int) -> int:
    return (seed + rank) % (1 << 64)


def saved_world(tensors: dict[str, torch.Tensor]) -> int:
    """How many processes wrote a last.safetensors (1 for a file from a single process)."""
    return sum(1 for k in tensors if re.fullmatch(r"rng\.rank\d+\.torch", k)) or 1


def restore(trainer: DistTrainer, tensors: dict, meta: dict, text: corpus.Corpus, directory) -> None:
    """commands.restore with this rank's share of the file: its streams' carried state and its generators (a rank
    the file has none for starts its generator as a new run's would)."""
    place, seed = trainer.group.place, trainer.cfg.seed
    lo, hi = place.shard(trainer.cfg.batch_size)
    mine = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    for k, v in mine.items():
        if k.startswith("state.") and v.dim() == 3 and v.shape[1] == trainer.cfg.batch_size:  # (layers, B, H)
            mine[k] = v[:, lo:hi]  # else run.restore refuses it
    own = tensors.get(f"rng.rank{place.rank}.torch", tensors.get("rng.torch") if place.rank == 0 else None)
    fresh = torch.Generator().manual_seed(rank_seed(seed, place.rank)).get_state()  # as a new run's rank r starts
    mine["rng.torch"] = own if own is not None else fresh
    commands.restore(trainer, mine, meta, text, directory)
    if trainer.device.type == "cuda":
        single = tensors["rng.cuda"][0] if place.rank == 0 and "rng.cuda" in tensors else None  # one GPU's run
        cuda = tensors.get(f"rng.rank{place.rank}.cuda", single)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, trainer.device)
        else:
            torch.cuda.manual_seed(rank_seed(seed, place.rank))
    was = saved_world(tensors)
    if was != place.world:
        info(f"the run was trained by {was} process(es) and continues on {place.world}: its "
             f"{trainer.cfg.batch_size} streams and their carried state are split anew")
        if trainer.model.cfg.dropout > 0:
            warn(f"--dropout {trainer.model.cfg.dropout}: from here the dropout masks differ from those of an "
                 f"uninterrupted run on {place.world} processes (each process has its own generator)")


def train_run(inputs: list[str], glob: str | None, out, name: str, given: dict, force: bool, resume: bool) -> None:
    """commands.train_run for one process of a torchrun launch."""
    place = Place()
    if "-" in inputs:
        raise UsageError("stdin cannot be the corpus of a distributed run (every process reads the corpus); save "
                         "it to a file and train on that")
    directory, tensors, meta, model_cfg, cfg, device = commands.train_settings(inputs, out, name, given, resume,
                                                                              place.device)
    place.check_batch(cfg.batch_size, resume, directory)
    group = Group(place, device)
    created, trainer = [], None
    try:
        with group.agreed():
            created = run.claim(directory, force, resume) if place.rank == 0 else []
        with commands.abort_on_signals():
            text = None
            for turn in (place.rank == 0, place.rank != 0):  # rank 0 builds the id cache; then the others read it
                with group.agreed():
                    if turn:
                        text = commands.load_corpus(inputs, glob, out / run.CACHE_DIR, cfg, meta, force)
            with group.agreed():
                make = functools.partial(DistTrainer, group=group)
                trainer = commands.build_trainer(text, model_cfg, cfg, device, make)
                if meta:
                    restore(trainer, tensors, meta, text, directory)
            trainer.connect()
        if not resume and place.rank == 0:
            run.clear(directory)
        info(f"distributed: {place.world} processes ({dist.get_backend()}), {cfg.batch_size // place.world} of the "
             f"{cfg.batch_size} streams each")
        train(trainer, text, directory, inputs)
    except BaseException:
        if place.rank == 0:
            run.release(directory, created)
        if trainer is not None and trainer.done:  # stopped by a signal, at the same step as every other process
            close(trainer)
        raise
    close(trainer)


def close(trainer: DistTrainer) -> None:
    """Leave the group together: DDP (whose reducer holds the group) goes first, then a barrier, so no process
    tears its connections down while another still uses them."""
    trainer.forward = trainer.model
    dist.barrier()
    dist.destroy_process_group()


def train(trainer: DistTrainer, text: corpus.Corpus, directory, inputs: list[str]) -> None:
    """Rank 0 trains with the listeners and says what happens; the others follow. A failed collective (another
    process died, or did not answer within TIMEOUT) ends every rank with one line from the first to see it."""
    group, place = trainer.group, trainer.group.place

    def hold(sig, frame):  # outside stop_on_signals, for the rest of the process: once one process has failed,
        trainer.stop_signal = trainer.stop_signal or sig  # torchrun signals the others, which must still say why

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, hold)
    try:
        if place.rank == 0:
            commands.train_loop(trainer, text, directory, inputs, place.launcher())
        else:
            follow(trainer)
    except CharrnnError as e:
        if place.rank == 0 and not isinstance(e, Interrupted):
            group.first_to_report()  # rank 0 said why: the others, losing it, stay quiet
        raise
    except RuntimeError as e:  # torch.distributed's errors, from a collective or from DDP inside backward()
        if not lost(e):
            raise
        raise failure(e, group, directory, inputs) from None


def failure(e: RuntimeError, group: Group, directory, inputs: list[str]) -> CharrnnError:
    """The one line that says a collective failed, from the first process to see it; quiet from the others."""
    place = group.place
    cause = re.sub(r"^\[[^\]]*\] ", "", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    cause = cause.split(". ")[0].rstrip(".")
    if not group.first_to_report():
        return quiet(1)
    console.quiet = False
    again = commands.resume_command(place.launcher(), inputs, directory)
    return CharrnnError(f"training stopped on rank {place.rank} of {place.world}: {cause} (another process of the "
                        f"run failed, was killed or stopped answering); {run.last_good(directory)}; resume with: "
                        f"{again}")


def lost(e: RuntimeError) -> bool:
    """Whether an error is a collective's failure (gloo's and nccl's are mostly plain RuntimeErrors)."""
    return isinstance(e, dist.DistError) or bool(re.search(r"gloo|nccl|connection|peer|timed? ?out|socket", str(e),
                                                             re.IGNORECASE))


def follow(trainer: DistTrainer) -> None:
    """A rank other than 0: train in step with rank 0, silently; a stop agreed on ends with its signal's code."""
    with commands.stop_on_signals(trainer):
        try:
            trainer.run()
        except NonFiniteError as e:  # every rank sees the same mean loss: rank 0 says it
            raise CharrnnError(str(e)) from None
        except KeyboardInterrupt:
            raise Interrupted(130) from None
    if trainer.stop_signal:
        raise Interrupted(128 + trainer.stop_signal)
