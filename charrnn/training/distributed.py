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

import re
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from charrnn.console import console, info, warn
from charrnn.data import corpus
from charrnn.errors import CharrnnError, Interrupted, UsageError
from charrnn.model.evaluate import evaluate_sums
from charrnn.training import finetune, rundir, session, stops
from charrnn.training.group import Group, Place, quiet
from charrnn.training.trainer import NonFiniteError, Trainer


class DistTrainer(Trainer):
    """A Trainer for one rank: its shard of the streams, DDP's averaged gradients, agreed stops, and a
    state_dict() that holds every rank's streams and generators."""

    def __init__(self, model, cfg, train_streams, val_streams, device, group: Group):
        self.group, self.local_signal, self.frac, self.snapshot = group, 0, 0.0, {}
        self.running, self.done = False, False
        super().__init__(model, cfg, train_streams.rows(*group.place.shard(train_streams.batch_size)),
                         val_streams.rows(*group.place.shard(val_streams.batch_size)), device)
        if group.place.rank:  # rank 0 keeps the single-process generator; the others draw their own dropout
            torch.manual_seed(rank_seed(cfg.seed, group.place.rank))

    def connect(self) -> None:
        """Wrap the model in DDP (which checks that every rank holds the same weights)."""
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device.type == "cuda"
        self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)

    def request_stop(self, sig: int) -> None:
        """A signal's request is honoured once every rank has seen it (finished() agrees on it)."""
        self.local_signal = self.local_signal or sig

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
        self.stop_signal, self.frac, p.elapsed_s = int(agreed[0]), agreed[1], agreed[2]
        return p.step >= self.total_steps or self.frac >= 1 or self.stop_requested

    def time_frac(self) -> float:
        return self.frac if self.running else super().time_frac()

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of their streams' mean losses: the whole batch's, the same on every rank."""
        return self.group.reduce(loss.float(), dist.ReduceOp.SUM) / self.group.place.world

    def val_loss(self) -> float:
        """Every rank's summed loss and count over its validation streams, added up in rank order."""
        val = self.val_streams
        mine = evaluate_sums(self.model, val, self.device, self.cfg.precision) if val.batch_size else (0, 0)
        sums = self.group.gather(torch.tensor(mine, dtype=torch.float64))  # W x (2,)
        return sum(float(s[0]) for s in sums) / sum(float(s[1]) for s in sums)

    def emit(self, kind: str, **metrics) -> None:
        """Before the events at which rank 0 may save last.safetensors, every rank joins in gathering it."""
        if kind in ("eval", "save", "end"):
            self.snapshot = self.gathered()
        super().emit(kind, **metrics)

    def state_dict(self) -> dict:
        """Trainer.state_dict() of the whole run, as gathered at the last event that may save."""
        return self.snapshot

    def gathered(self) -> dict:
        """This rank's Trainer.state_dict() with every rank's carried state joined into all B streams and every
        rank's generators (rng.rankR.*; rng.torch is rank 0's, as from one process)."""
        g, sd = self.group, Trainer.state_dict(self)
        sd["state"] = [torch.cat(g.gather(s), dim=1) for s in self.state]  # each (layers, B, H)
        rng = g.gather(torch.get_rng_state())  # W x (n,) uint8
        sd["rng"] = {"torch": rng[0].clone(), **{f"rank{r}.torch": t for r, t in enumerate(rng)}}
        if self.device.type == "cuda":
            cuda = g.gather(torch.cuda.get_rng_state(self.device))  # W x (m,) uint8, each rank's own GPU
            sd["rng"].update({"cuda": cuda[0][None], **{f"rank{r}.cuda": t for r, t in enumerate(cuda)}})
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Trainer.load_state_dict with this rank's share: its streams' carried state and its generators (a rank
        the file has none for starts its generator as a new run's would)."""
        place, seed, B = self.group.place, self.cfg.seed, self.cfg.batch_size
        lo, hi = place.shard(B)
        rng = sd["rng"]
        own = rng.get(f"rank{place.rank}.torch", rng.get("torch") if place.rank == 0 else None)
        fresh = torch.Generator().manual_seed(rank_seed(seed, place.rank)).get_state()  # as a new run's rank r
        mine = {**sd, "rng": {"torch": own if own is not None else fresh},
                "state": [s[:, lo:hi] if s.dim() == 3 and s.shape[1] == B else s for s in sd["state"]]}
        super().load_state_dict(mine)  # (layers, B, H) -> (layers, B / W, H); another shape is refused there
        if self.device.type == "cuda":
            single = rng["cuda"][0] if place.rank == 0 and "cuda" in rng else None  # one GPU's run
            cuda = rng.get(f"rank{place.rank}.cuda", single)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)
            else:
                torch.cuda.manual_seed(rank_seed(seed, place.rank))
        was = sum(1 for k in rng if re.fullmatch(r"rank\d+\.torch", k)) or 1  # processes that wrote the file
        if was != place.world:
            info(f"the run was trained by {was} process(es) and continues on {place.world}: its {B} streams and "
                 "their carried state are split anew")
            if self.model.cfg.dropout > 0:
                warn(f"--dropout {self.model.cfg.dropout}: from here the dropout masks differ from those of an "
                     f"uninterrupted run on {place.world} processes (each process has its own generator)")


def rank_seed(seed: int, rank: int) -> int:
    return (seed + rank) % (1 << 64)


def train(*, inputs: list[str], glob: str | None, out: Path | None, run: str | None, config_file: Path | None,
          flags: dict, force: bool, resume: bool, threads: int | None, init_from: str | None = None,
          keep_vocab: bool = False) -> None:
    """session.train for one process of a torchrun launch. Rank 0 speaks. Before the process group forms, the first
    process of every other node also says why it fails (every process checks the same flags, so one per node is
    enough, and a node whose corpus is missing is not silent); later, the first process to fail says why."""
    place = Place()
    console.quiet = place.rank != 0 and place.local_rank != 0
    if "-" in inputs:
        raise UsageError("stdin cannot be the corpus of a distributed run (every process reads the corpus); save "
                         "it to a file and train on that")
    given, name, out, glob = session.prepare(inputs, config_file, flags,
                                             dict(run=run, out=out, glob=glob, threads=threads))
    source = finetune.load_source(init_from, keep_vocab, resume, out)  # every process starts from the same model
    directory, tensors, meta, model_cfg, cfg = session.settings(inputs, out, name, given, resume, source)
    device = place.device(cfg.device)
    session.choose_precision(cfg, model_cfg, meta, device, directory, "precision" in given)
    place.check_batch(cfg.batch_size, resume, directory)
    group = Group(place, device)
    console.quiet = place.rank != 0  # from here on, the first process to fail says why (Group.agreed)
    held, trainer = None, None
    try:
        with group.agreed():
            held = rundir.claim(directory, force, resume) if place.rank == 0 else None
        with stops.abort_on_signals():
            text = None
            for turn in (place.rank == 0, place.rank != 0):  # rank 0 builds the id cache; then the others read it
                with group.agreed():
                    if turn:
                        text = session.load_corpus(inputs, glob, out, cfg, meta, force, source)
            with group.agreed():
                model = session.build_model(text, model_cfg, cfg, device)
                trainer = DistTrainer(model, cfg, *session.splits(text, cfg), device, group)
                if meta:
                    session.restore(trainer, tensors, meta, text, directory)
            trainer.connect()
        if not resume and place.rank == 0:
            rundir.clear(directory)
        info(f"distributed: {place.world} processes ({dist.get_backend()}), {cfg.batch_size // place.world} of the "
             f"{cfg.batch_size} streams each")
        steps(trainer, text, directory, inputs)
    except RuntimeError as e:  # a collective of the setup failed: another process died or stopped answering
        if held is not None:
            rundir.release(held)
        if not lost(e):
            raise
        raise failure(e, group, directory, inputs) from None
    except BaseException:
        if held is not None:
            rundir.release(held)
        if trainer is not None and trainer.done:  # stopped by a signal, at the same step as every other process
            close(trainer)
        raise
    close(trainer)
    if held is not None:
        rundir.unlock(held)


def close(trainer: DistTrainer) -> None:
    """Leave the group together: DDP (whose reducer holds the group) goes first, then a barrier, so no process
    tears its connections down while another still uses them."""
    trainer.forward = trainer.model
    dist.barrier()
    dist.destroy_process_group()


def steps(trainer: DistTrainer, text: corpus.Corpus, directory: Path, inputs: list[str]) -> None:
    """Rank 0 trains with the listeners and says what happens; the others follow. A failed collective (another
    process died, or did not answer within TIMEOUT) ends every rank with one line from the first to see it."""
    group, place = trainer.group, trainer.group.place

    def hold(sig, frame):  # outside stop_on_signals, for the rest of the process: once one process has failed,
        trainer.request_stop(sig)  # torchrun signals the others, which must still say why

    for s in stops.STOPS:
        signal.signal(s, hold)
    try:
        if place.rank == 0:
            session.train_loop(trainer, text, directory, inputs)
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


def failure(e: RuntimeError, group: Group, directory: Path, inputs: list[str]) -> CharrnnError:
    """The one line that says a collective failed, from the first process to see it; quiet from the others."""
    place = group.place
    cause = re.sub(r"^\[[^\]]*\] ", "", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    cause = cause.split(". ")[0].rstrip(".")
    if not group.first_to_report():
        return quiet(1)
    console.quiet = False
    return CharrnnError(f"training stopped on rank {place.rank} of {place.world}: {cause} (another process of the "
                        f"run failed, was killed or stopped answering); {rundir.last_good(directory)}; resume with: "
                        f"{session.resume_command(inputs, directory)}")


def lost(e: RuntimeError) -> bool:
    """Whether an error is a collective's failure (gloo's and nccl's are mostly plain RuntimeErrors)."""
    return isinstance(e, dist.DistError) or bool(re.search(r"gloo|nccl|connection|peer|timed? ?out|socket", str(e),
                                                             re.IGNORECASE))


def follow(trainer: DistTrainer) -> None:
    """A rank other than 0: train in step with rank 0, silently; a stop agreed on ends with its signal's code."""
    with stops.stop_on_signals(trainer):
        try:
            trainer.run()
        except NonFiniteError as e:  # every rank sees the same mean loss: rank 0 says it
            raise CharrnnError(str(e)) from None
        except KeyboardInterrupt:
            raise Interrupted(130) from None
    if trainer.stop_signal:
        raise Interrupted(128 + trainer.stop_signal)
