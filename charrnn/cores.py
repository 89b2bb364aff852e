"""Threads that hold up when the cores are shared.

With every core in use by torch, one other busy process (a browser, a second run, a test suite) makes each
parallel operation wait at its barrier for a thread the kernel has put aside: charrnn then runs 10 to 20 times
slower, while one thread runs as fast as it does alone. So, unless the user fixed the count (--threads,
OMP_NUM_THREADS, torchrun), the loops that do the work call `tick()`, and about once a second it times a small
matrix product (the shape of a training step's) with one thread and with all of them, on tensors of its own,
and runs the work with whichever is faster. The model's numbers never enter the probe, so on an idle machine
the count never changes and the results are those of a fixed count; under load they differ in the last bits,
as between any two thread counts (exact reproduction pins --threads: see the README).
"""

from __future__ import annotations

import statistics
import time

import torch

EVERY = 1.0  # seconds between probes
REPS = 5  # products per timing
ROUNDS = 3  # alternating timings per probe, their medians compared
GAIN = 0.9  # all threads are kept only if they take at most this fraction of one thread's time


class Governor:
    """Picks, once every EVERY seconds of work, between one thread and `most`."""

    def __init__(self, most: int, adapt: bool, clock=time.perf_counter):
        self.most, self.adapt, self.clock = most, adapt and most > 1, clock
        self.threads, self.wanted, self.due, self.probes = most, most, 0.0, 0
        # no random numbers: a probe must not move the global generator that seeded runs draw from
        self.a, self.b, self.out = torch.full((32, 256), 0.5), torch.full((256, 768), 0.25), torch.empty(32, 768)

    def tick(self) -> None:
        """Call once per unit of work (a training step, a sampled character, a scored batch): cheap between
        probes."""
        if self.adapt and self.clock() >= self.due:
            self.use(self.choose(*self.probe()))
            self.due = self.clock() + EVERY

    def time(self, threads: int, limit: float) -> float:
        """Seconds per product with `threads`, stopping early once `limit` seconds have gone."""
        torch.set_num_threads(threads)
        torch.mm(self.a, self.b, out=self.out)  # wakes the pool
        start, done, spent = self.clock(), 0, 0.0
        while done < REPS and spent <= limit:
            torch.mm(self.a, self.b, out=self.out)
            done, spent = done + 1, self.clock() - start
        return spent / done

    def probe(self) -> tuple[float, float]:
        """(seconds per product with one thread, with all of them): medians of up to ROUNDS alternating timings,
        one round only when all threads are plainly slower (each of their products can then cost a time slice)."""
        self.probes += 1
        one, many = [], []
        for _ in range(ROUNDS):
            one.append(self.time(1, float("inf")))
            many.append(self.time(self.most, 2 * REPS * one[-1]))
            if many[-1] > 2 * one[-1]:
                break
        torch.set_num_threads(self.threads)
        return statistics.median(one), statistics.median(many)

    def choose(self, one: float, many: float) -> int:
        """One thread as soon as a probe finds all of them slower (they cost 10 to 20 times more under load); all
        of them again only once two probes in a row find them faster (a probe can fall in a lull of the load)."""
        want = self.most if many <= GAIN * one else 1
        agreed, self.wanted = want == self.wanted, want
        return want if want < self.threads or agreed else self.threads

    def use(self, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)


governor = Governor(1, adapt=False)


def start(threads: int, adapt: bool) -> int:
    """Set torch's threads to `threads`; with adapt, let tick() move between one and that many."""
    global governor
    governor = Governor(threads, adapt)
    governor.use(threads)
    return threads


def tick() -> None:
    governor.tick()


def shown() -> str:
    """How training's first line names the threads."""
    g = governor
    threads = f"{g.most} thread{'' if g.most == 1 else 's'}"
    return f"{threads}, 1 while other processes load the cores" if g.adapt else threads
