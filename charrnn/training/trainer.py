"""Trainer: the truncated-BPTT loop. Silent: it reports through events and knows nothing of files or terminals."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from charrnn import cores
from charrnn.config import TrainConfig
from charrnn.console import counted
from charrnn.data.batches import Streams
from charrnn.device import autocast
from charrnn.errors import CharrnnError
from charrnn.model.evaluate import evaluate
from charrnn.model.files import fitting
from charrnn.model.rnn import CharRNN, State, detach
from charrnn.training.adamw import AdamW


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed passes over the training split
    window: int = 0  # next window of the current epoch (the cursor of every stream)
    elapsed_s: float = 0.0  # training wall-clock time, across resumes
    best_val: float = math.inf  # lowest validation loss so far, nats per character
    best_step: int = 0  # step at which best_val was reached
    skipped: int = 0  # steps skipped for a non-finite loss or gradient


class NonFiniteError(CharrnnError):
    """Training diverged: too many non-finite steps in a row."""


@dataclass
class Event:
    kind: str  # "log" | "eval" | "end"
    metrics: dict = field(default_factory=dict)


def lr_at(cfg: TrainConfig, step: int, total_steps: float, time_frac: float) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_frac by the end of the budget."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    done = time_frac
    if math.isfinite(total_steps):
        done = max(done, (step - cfg.warmup_steps) / max(1.0, total_steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


class Trainer:
    """Trains model on the windows of train_streams, validating on val_streams. The hooks a distributed run
    overrides (training/distributed.py): forward, mean_loss, val_loss, finished, request_stop, state_dict."""

    def __init__(self, model: CharRNN, cfg: TrainConfig, train_streams: Streams, val_streams: Streams,
                 device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.train_streams, self.val_streams = train_streams, val_streams
        self.optimizer = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.forward: Callable = model  # what the training step calls: the model, or its DistributedDataParallel
        self.state: State = model.init_state(train_streams.batch_size, device)
        self.progress = Progress()
        self.listeners: list[Callable[[Event], None]] = []
        self.stop_signal = 0  # the signal that asked to stop at the next step boundary (0: none)
        self.bad_in_a_row = 0  # consecutive steps skipped for non-finite values
        self.eval_s: float | None = None  # how long the last validation took (with its checkpoint saves)
        self.session = (0, 0.0)  # (step, elapsed_s) where this process started training

    def request_stop(self, sig: int) -> None:
        """From a signal handler: stop (and save) at the next step boundary."""
        self.stop_signal = self.stop_signal or sig

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal != 0

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self.listeners.append(listener)

    def emit(self, kind: str, **metrics) -> None:
        for listener in self.listeners:
            listener(Event(kind, metrics))

    @property
    def decay_steps(self) -> float:
        """The cosine horizon: --decay-steps, else the step budget."""
        return self.cfg.decay_steps or self.total_steps

    @property
    def total_steps(self) -> float:
        """The step budget: the smaller of --max-steps and --epochs (inf if neither)."""
        limits = [math.inf]
        if self.cfg.max_steps is not None:
            limits.append(self.cfg.max_steps)
        if self.cfg.epochs is not None:
            limits.append(math.ceil(self.cfg.epochs * len(self.train_streams)))
        return min(limits)

    def eval_seconds(self) -> float:
        """The expected time of the final validation: the last one's, else a third of the time of as many
        training steps as the split has windows (a forward pass is about a third of a training step)."""
        if self.eval_s is not None:
            return self.eval_s
        steps, seconds = self.progress.step - self.session[0], self.progress.elapsed_s - self.session[1]
        return seconds / steps * (len(self.val_streams) + 1) / 3 if steps else 0.0

    def time_frac(self) -> float:
        """The fraction of the time budget's training part spent: training stops at 1, leaving the final
        validation its expected time, so the run ends annealed and evaluated by the deadline."""
        if not self.cfg.minutes:
            return 0.0
        return self.progress.elapsed_s / max(self.cfg.minutes * 60 - self.eval_seconds(), 1e-9)

    def finished(self) -> bool:
        return self.progress.step >= self.total_steps or self.time_frac() >= 1 or self.stop_requested

    def step(self) -> float:
        """One optimizer step on the next window of every stream; returns the mean training loss.

        A non-finite loss or gradient skips the update (the window is still consumed)."""
        p = self.progress
        if p.window == 0:  # an epoch starts: every stream goes back to its beginning, with a fresh state
            self.state = self.model.init_state(self.train_streams.batch_size, self.device)
        x, y = self.train_streams.window(p.window)  # (B, T) each
        x, y = x.to(self.device), y.to(self.device)
        lr = lr_at(self.cfg, p.step, self.decay_steps, 0.0 if self.cfg.decay_steps else self.time_frac())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.cfg.precision):
            logits, state = self.forward(x, self.state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = self.mean_loss(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        if torch.isfinite(loss) and torch.isfinite(norm):
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:
            p.skipped += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= self.cfg.max_nonfinite:
                row = counted(self.bad_in_a_row, "step") + " in a row" * (self.bad_in_a_row > 1)
                raise NonFiniteError(f"{row} had a non-finite loss or gradient "
                                     f"(last at step {p.step}); try a lower --lr")
        self.state = detach(state)
        p.step += 1
        p.window += 1
        if p.window == len(self.train_streams):
            p.window, p.epoch = 0, p.epoch + 1
        return loss.item()

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss over the whole batch (here: the loss itself; distributed: the mean over processes)."""
        return loss

    def val_loss(self) -> float:
        return evaluate(self.model, self.val_streams, self.device, self.cfg.precision)

    def state_dict(self) -> dict:
        """Everything an exact resume needs, in one dict (model/files.py packs it into last.safetensors): weights,
        AdamW's moments and step counts, every stream's carried state, the generators, and the progress (the
        streams' cursor included)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())  # (devices, n) uint8
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(), "state": list(self.state),
                "rng": rng, "rng_python": random.getstate(), "progress": dataclasses.asdict(self.progress)}

    def load_state_dict(self, sd: dict) -> None:
        """Put the trainer exactly where state_dict() was taken. Every piece is checked against the model and the
        batch before anything changes (KeyError, TypeError or ValueError naming the piece)."""
        weights = fitting(self.model, sd["model"])
        check_optimizer(self.optimizer, sd["optim"]["state"])
        state = tuple(sd["state"])
        if len(state) != len(self.state) or any(s.shape != t.shape or not s.is_floating_point()
                                                for s, t in zip(state, self.state, strict=False)):
            raise ValueError("the carried state (state.*) does not fit the model and --batch-size")
        version, internal, gauss = sd["rng_python"]
        fields = dict(sd["progress"])
        fields["best_val"] = math.inf if fields["best_val"] is None else fields["best_val"]  # None: read from a file
        progress = Progress(**fields)
        self.model.load_state_dict(weights)
        if sd["optim"]["state"]:  # empty when saved before the first update (every step so far skipped)
            self.optimizer.load_state_dict(sd["optim"])
        self.state = tuple(s.to(self.device, torch.float32) for s in state)
        torch.set_rng_state(sd["rng"]["torch"])
        if "cuda" in sd["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(list(sd["rng"]["cuda"]))
        random.setstate((version, tuple(internal), gauss))
        self.progress = progress

    def validate(self) -> None:
        p, start = self.progress, time.monotonic()
        val = self.val_loss()
        improved = val < p.best_val
        if improved:
            p.best_val, p.best_step = val, p.step
        self.emit("eval", step=p.step, elapsed_s=p.elapsed_s, val_loss=val, val_bpc=val / math.log(2),
                  improved=improved)
        self.eval_s = time.monotonic() - start  # the listeners' checkpoint saves included

    def run(self) -> Progress:
        """Train until a budget runs out or a stop is requested; validate every eval_every and at the end."""
        p, cfg = self.progress, self.cfg
        self.model.train()
        start, chars, losses = time.monotonic() - p.elapsed_s, 0, []
        self.session = (p.step, p.elapsed_s)
        mark = time.monotonic()
        last_eval = p.step
        while not self.finished():
            cores.tick()
            losses.append(self.step())
            chars += self.cfg.batch_size * self.cfg.seq_len
            p.elapsed_s = time.monotonic() - start
            if p.step % cfg.log_every == 0:
                now = time.monotonic()
                self.emit("log", step=p.step, epoch=p.epoch + p.window / len(self.train_streams), elapsed_s=p.elapsed_s,
                          lr=self.optimizer.param_groups[0]["lr"], train_loss=sum(losses) / len(losses),
                          chars_per_s=chars / max(now - mark, 1e-9))
                chars, losses, mark = 0, [], now
            if p.step % cfg.eval_every == 0:
                self.validate()
                last_eval, chars, mark = p.step, 0, time.monotonic()
            elif cfg.save_every and p.step % cfg.save_every == 0:
                self.emit("save", step=p.step)
        if not self.stop_requested and last_eval != p.step:
            self.validate()
        self.emit("end", step=p.step, elapsed_s=p.elapsed_s, best_val=p.best_val, stopped=self.stop_requested)
        return p


def check_optimizer(optimizer: AdamW, state: dict[int, dict[str, torch.Tensor]]) -> None:
    """AdamW's moments and step counts, each checked against its parameter's shape (a mismatch would otherwise
    surface as an error midway through the next step); empty state (no update yet) passes."""
    if not state:
        return
    for i, param in enumerate(optimizer.params):
        s = state.get(i, {})
        shapes = {"step": (), "exp_avg": param.shape, "exp_avg_sq": param.shape}
        if s.keys() != shapes.keys() or any(tuple(s[k].shape) != tuple(v) for k, v in shapes.items()):
            raise ValueError(f"optimizer state optim.{i}.* does not match parameter {i}")
    if state.keys() != set(range(len(optimizer.params))):
        raise ValueError("the optimizer state is for another model")
