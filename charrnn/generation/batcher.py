"""Requests that arrive together are sampled together: one worker thread per model steps every unfinished choice
of every request in flight as one batch, as `charrnn sample --num-samples` steps its samples.

    request ─submit─> inbox ─> worker: a request's prompts warmed up, its rows join the batch (states concatenated)
                               each step: a character drawn for every row (rows grouped by their options), handed
                               to its request; finished rows leave (step.keep); the rest step on together
    request <─ Job.events <─── worker, and once a step, Batcher.post (the event loop's call_soon_threadsafe) runs
                               Job.ready for the requests that got something

Each prompt of a request keeps its own noise: a generator seeded with the request's seed warms up the prompt and
draws a sample.Noise for the prompt's n rows, as `charrnn sample --seed S --num-samples N --prime P` does, and its
rows are drawn with sample.draw at the request's options; so a seeded request stepped alone writes that command's
text. In a shared batch the rows draw the same noise, but a row's matrix products can round differently in their
last bits at another batch size (one row takes a matrix-vector kernel, several a matrix-matrix one), which can turn
a near tie the other way.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable

import torch

from charrnn import cores
from charrnn.config import SampleConfig
from charrnn.console import error
from charrnn.generation.job import Job
from charrnn.generation.sample import Noise, draw, warm_up
from charrnn.model.rnn import CharRNN, cat_states
from charrnn.model.steps import step_for


class Group:
    """The rows of one prompt of a request: its noise (one sample.Noise of n rows, as `charrnn sample` draws) and
    the columns of it still in the batch."""

    def __init__(self, job: Job, first: int, noise: Noise, cfg: SampleConfig):
        self.job, self.first, self.noise, self.cfg = job, first, noise, cfg
        self.cols = list(range(noise.n))
        self.key = (cfg.temperature, cfg.top_k, cfg.top_p)


class Batcher:
    """One model's batch and the worker thread that steps it. post(fn) runs fn on the event loop (thread-safe)."""

    def __init__(self, model: CharRNN, vocab, device: torch.device, precision: str, timeout: float):
        self.model, self.vocab, self.device, self.precision, self.timeout = model, vocab, device, precision, timeout
        self.post: Callable[[Callable[[], None]], None] = lambda fn: fn()
        self.inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.groups: list[Group] = []  # the batch's rows: each group's columns, in order
        self.logits: torch.Tensor | None = None  # (B, V): every row's next-character logits
        self.buckets: dict | None = None  # rows by their options: {key: (cfg, rows (b,))}; None: to be remade
        self.cut_at, self.stopped = math.inf, False
        self.steps = self.chars = self.most = 0  # for /health: steps taken, characters made, the most rows at once
        self.touched: set[Job] = set()
        self.pending: set[Job] = set()  # requests with events the event loop has not been told of
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name="charrnn-batcher", daemon=True)
        model.eval()
        first, state = warm_up(model, vocab, "", torch.Generator().manual_seed(0), device, precision)  # (1, V)
        self.step = step_for(model, state, True, precision)  # made once; its rows replaced as requests come and go
        self.step(first.argmax(dim=-1))  # the first step pays for what torch sets up once

    @property
    def rows(self) -> int:
        return sum(len(g.cols) for g in self.groups)

    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def close(self, grace: float) -> None:
        """Take no more requests; cut those still running after grace seconds."""
        self.cut_at = min(self.cut_at, time.monotonic() + grace)

    def stop(self) -> None:
        """End the worker: what is still in the batch is cut."""
        self.close(0)
        self.stopped = True
        self.thread.join(timeout=5)

    def run(self) -> None:
        while not (self.stopped and not self.groups):
            try:
                self.admit()
                if self.groups:
                    self.advance()
            except Exception as e:  # out of memory, a bug: the requests in the batch end with an error, serving goes on
                error(f"sampling failed: {type(e).__name__}: {e}")
                for g in self.groups:
                    g.job.fail("error", f"the server failed while sampling ({type(e).__name__})")
                    self.touched.add(g.job)
                self.groups, self.logits, self.buckets = [], None, None
            self.wake()

    def admit(self) -> None:
        """The requests that arrived join the batch together (waiting a little for one while it is empty)."""
        block, logits, states = not self.groups, [], []
        while True:
            try:
                job = self.inbox.get(block, 0.1)
            except queue.Empty:
                break
            block = False
            try:
                self.warm(job, logits, states)
            except Exception as e:  # out of memory while warming a prompt up: this request alone fails
                error(f"warming a prompt up failed: {type(e).__name__}: {e}")
                job.fail("error", f"the server failed while reading the prompt ({type(e).__name__})")
        if logits:
            if self.logits is not None:
                logits.insert(0, self.logits)
                states.insert(0, self.step.state())
            self.logits = torch.cat(logits)  # (B, V)
            self.step.allocate(cat_states(states))  # each (layers, B, H)
            self.buckets = None

    def warm(self, job: Job, logits: list, states: list) -> None:
        """A request's prompts warmed up, each as n new rows at the end of the batch: their groups join, their
        logits and states go on the lists to be concatenated to the batch's."""
        spec, now = job.spec, time.monotonic()
        self.touched.add(job)
        if job.cancelled:  # its client left while it waited
            return
        if now >= self.cut_at or now >= job.deadline:
            return job.fail(*self.ending(now >= self.cut_at))
        if spec.max_tokens == 0:
            job.events.extend((c, "", "length") for c in range(len(job.count)))
            return
        cfg = SampleConfig(temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p)
        groups, firsts, starts = [], [], []
        for i, prompt in enumerate(spec.prompts):
            seed = spec.seed if spec.seed is not None else int.from_bytes(os.urandom(4), "little")
            gen = torch.Generator().manual_seed(seed)
            first, state = warm_up(self.model, self.vocab, prompt, gen, self.device, self.precision)  # (1, V)
            firsts.append(first.expand(spec.n, -1))  # (n, V)
            starts.append(tuple(s.expand(-1, spec.n, -1) for s in state))  # each (layers, n, H)
            groups.append(Group(job, i * spec.n, Noise(gen, spec.n, len(self.vocab)), cfg))
        self.groups += groups
        logits += firsts
        states += starts

    def ending(self, cut: bool) -> tuple[str, str]:
        if cut:
            return "shutdown", "the server is shutting down; this request was cut short"
        return "timeout", f"the request ran past this server's limit of {self.timeout:g} s (its --timeout)"

    def advance(self) -> None:
        """One character for every row: drawn, handed to its request; finished rows leave, the rest step on."""
        cores.tick()
        self.drop_ended(time.monotonic())
        if not self.groups:
            return
        on_cpu = self.device.type == "cpu"
        rows = self.rows
        ids = self.draw(self.logits if on_cpu else self.logits.cpu(), self.noise())  # (B,)
        self.steps, self.chars, self.most = self.steps + 1, self.chars + rows, max(self.most, rows)  # before any
        keep = self.hand_out(ids.tolist(), rows)  # request can see its characters
        if not keep:
            self.logits, self.buckets = None, None
            return
        if len(keep) < rows:
            self.step.keep(torch.tensor(keep, device=self.device))
            ids, self.buckets = ids[keep], None
        self.logits = self.step(ids if on_cpu else ids.to(self.device))  # (B', V)

    def drop_ended(self, now: float) -> None:
        """Rows of requests whose client went away, that ran past their time, or that the stop cuts, leave."""
        cut = now >= self.cut_at
        ended = [g for g in self.groups if g.job.cancelled or g.job.failed or cut or now >= g.job.deadline]
        if not ended:
            return
        keep, r = [], 0
        for g in self.groups:
            if g in ended:
                g.job.fail(*self.ending(cut))
                self.touched.add(g.job)
            else:
                keep.extend(range(r, r + len(g.cols)))
            r += len(g.cols)
        self.groups, self.buckets = [g for g in self.groups if g not in ended], None
        if keep:
            self.step.keep(torch.tensor(keep, device=self.device))
        self.logits = self.logits[torch.tensor(keep, device=self.logits.device)] if keep else None

    def noise(self) -> torch.Tensor:
        """(B, V): each group's next noise, its rows still in the batch."""
        parts = []
        for g in self.groups:
            step = g.noise.next()  # (n, V): drawn every step the group has rows, as generate_batch does
            parts.append(step if len(g.cols) == g.noise.n else step[g.cols])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def draw(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B,) ids: sample.draw for each set of options the rows hold (once when all share them)."""
        if self.buckets is None:
            found, r = {}, 0
            for g in self.groups:
                found.setdefault(g.key, (g.cfg, []))[1].extend(range(r, r + len(g.cols)))
                r += len(g.cols)
            self.buckets = {k: (cfg, torch.tensor(rows)) for k, (cfg, rows) in found.items()}
        if len(self.buckets) == 1:
            return draw(logits, noise, next(iter(self.buckets.values()))[0])
        ids = torch.empty(logits.shape[0], dtype=torch.long)  # (B,)
        for cfg, rows in self.buckets.values():
            ids[rows] = draw(logits[rows], noise[rows], cfg)
        return ids

    def hand_out(self, chosen: list[int], rows: int) -> list[int]:
        """Each row's character to its request; the rows that go on (the groups keep only their columns)."""
        keep, r, chars = [], 0, self.vocab.chars
        for g in self.groups:
            job, still = g.job, []
            job.batch = max(job.batch, rows)
            for col in g.cols:
                if job.take(g.first + col, chars[chosen[r]]):
                    still.append(col)
                    keep.append(r)
                r += 1
            g.cols = still
            self.touched.add(job)
        self.groups = [g for g in self.groups if g.cols]
        return keep

    def wake(self) -> None:
        """Tell the event loop which requests have news: one post a step, none while it has one to run."""
        if not self.touched:
            return
        with self.lock:
            first = not self.pending
            self.pending |= self.touched
        self.touched = set()
        if first:
            self.post(self.deliver)

    def deliver(self) -> None:
        """On the event loop: wake the requests that have events."""
        with self.lock:
            jobs, self.pending = self.pending, set()
        for job in jobs:
            job.ready()
