"""Trainer: the truncated-BPTT loop. Silent: it reports through events and knows nothing of files or terminals."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from charrnn.adamw import AdamW
from charrnn.batches import Streams
from charrnn.config import TrainConfig
from charrnn.device import autocast
from charrnn.errors import CharrnnError
from charrnn.model import CharRNN, State, detach


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


def evaluate(model: CharRNN, streams: Streams, device: torch.device, precision: str = "fp32") -> float:
    """Mean loss (nats per character) over every window of streams, state carried, no dropout, then over the
    characters past the streams: every character but the first is predicted exactly once."""
    total, count = evaluate_sums(model, streams, device, precision)
    return total / count


@torch.no_grad()
def evaluate_sums(model: CharRNN, streams: Streams, device: torch.device, precision: str = "fp32") -> tuple[float, int]:
    """(summed loss in nats, characters predicted) over streams, as evaluate reads them."""
    was_training = model.training
    model.eval()
    state, total, count = None, 0.0, 0
    for x, y in streams:
        with autocast(device, precision):
            logits, state = model(x.to(device), state)  # (B, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    tail = streams.tail()
    if tail is not None:  # the characters past the streams continue the last one, from its state
        x, y = tail  # (1, R) each
        with autocast(device, precision):
            logits, _ = model(x.to(device), tuple(s[:, -1:].contiguous() for s in state))  # (1, R, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total, count


class Trainer:
    def __init__(self, model: CharRNN, cfg: TrainConfig, train: Streams, val: Streams, device: torch.device):
        self.model, self.cfg, self.train, self.val, self.device = model, cfg, train, val, device
        self.optimizer = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.forward: Callable = model  # what the training step calls: the model, or its DistributedDataParallel
        self.state: State = model.init_state(train.batch_size, device)
        self.progress = Progress()
        self.listeners: list[Callable[[Event], None]] = []
        self.stop_requested = False  # set from a signal handler; honoured at the next step boundary
        self.stop_signal = 0  # the signal that asked for the stop (0: none)
        self.bad_in_a_row = 0  # consecutive steps skipped for non-finite values
        self.eval_s: float | None = None  # how long the last validation took (with its checkpoint saves)
        self.session = (0, 0.0)  # (step, elapsed_s) where this process started training

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
            limits.append(math.ceil(self.cfg.epochs * len(self.train)))
        return min(limits)

    def eval_seconds(self) -> float:
        """The expected time of the final validation: the last one's, else a third of the time of as many
        training steps as the split has windows (a forward pass is about a third of a training step)."""
        if self.eval_s is not None:
            return self.eval_s
        steps, seconds = self.progress.step - self.session[0], self.progress.elapsed_s - self.session[1]
        return seconds / steps * (len(self.val) + 1) / 3 if steps else 0.0

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
            self.state = self.model.init_state(self.train.batch_size, self.device)
        x, y = self.train.window(p.window)  # (B, T) each
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
                raise NonFiniteError(f"{self.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                                     f"(last at step {p.step}); try a lower --lr")
        self.state = detach(state)
        p.step += 1
        p.window += 1
        if p.window == len(self.train):
            p.window, p.epoch = 0, p.epoch + 1
        return loss.item()

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss over the whole batch (here: the loss itself; distributed: the mean over processes)."""
        return loss

    def val_loss(self) -> float:
        return evaluate(self.model, self.val, self.device, self.cfg.precision)

    def carried(self) -> dict[str, torch.Tensor]:
        """What last.safetensors needs besides weights and optimizer: the carried state and the generators."""
        tensors = {f"state.{i}": s for i, s in enumerate(self.state)}
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return tensors

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
            losses.append(self.step())
            chars += self.cfg.batch_size * self.cfg.seq_len
            p.elapsed_s = time.monotonic() - start
            if p.step % cfg.log_every == 0:
                now = time.monotonic()
                self.emit("log", step=p.step, epoch=p.epoch + p.window / len(self.train), elapsed_s=p.elapsed_s,
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
