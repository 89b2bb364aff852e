"""Generation: N samples as one batch, each sampled character fed back in; the samples written in order."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from charrnn import cores
from charrnn.config import MAX_SAMPLES, SampleConfig
from charrnn.console import warn
from charrnn.data.text import read_text
from charrnn.data.vocab import Vocab
from charrnn.device import autocast
from charrnn.errors import CharrnnError
from charrnn.model.files import load_chosen
from charrnn.model.rnn import CharRNN, State, cat_states
from charrnn.model.steps import step_for

Piece = tuple[int, str | None]  # (sample, character), or (sample, None) once that sample has ended
PRIME_CHUNK = 4096  # prime characters fed per forward pass: bounds the (1, P, V) logits of a long prime


def filtered_logprobs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities (B, V), float64, after temperature, then top-k, then top-p; -inf outside the kept set.

    The max is subtracted before dividing by the temperature, so a tiny temperature sends every other
    character to -inf (never inf - inf = NaN). Top-k keeps ties at the k-th value; top-p keeps the likeliest
    characters until their probabilities reach p (always at least one)."""
    z = logits.double()  # (B, V)
    z = (z - z.amax(dim=-1, keepdim=True)) / temperature  # (B, V), max 0: nothing overflows
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # (B, 1)
        z = z.masked_fill(z < kth, -math.inf)
    logp = torch.log_softmax(z, dim=-1)  # (B, V)
    if top_p < 1:
        p_sorted, order = logp.exp().sort(dim=-1, descending=True, stable=True)  # (B, V) each
        before = p_sorted.cumsum(dim=-1) - p_sorted  # (B, V) mass of the likelier characters
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)  # (B, V)
        logp = torch.log_softmax(logp.masked_fill(drop, -math.inf), dim=-1)
    return logp


class Noise:
    """Gumbel noise for every sample and every step, drawn from one generator in blocks of steps: both steps of
    model/steps.py (the model's modules and the fused one) take the same random numbers, so they write the same
    text. The generator's numbers come in order however the blocks are cut, so blocks start short (a sample of a
    few characters, a server's request, pays for no more) and double up to about 1 MB."""

    def __init__(self, gen: torch.Generator, n: int, vocab_size: int):
        self.gen, self.n, self.V = gen, n, vocab_size
        self.block_steps = max(1, (1 << 18) // (n * vocab_size))  # the largest block: about 1 MB
        self.steps = 8  # the next block's steps
        self.block: list[torch.Tensor] = []  # the block's steps not yet used, last first

    def next(self) -> torch.Tensor:
        """(n, V) Gumbel(0, 1) noise for this step."""
        if not self.block:
            k, self.steps = min(self.steps, self.block_steps), 2 * self.steps
            u = torch.rand(k, self.n, self.V, generator=self.gen)  # (K, n, V) in [0, 1)
            self.block = list(reversed((-torch.log(-torch.log(u))).unbind(0)))  # K views (n, V), made at once
        return self.block.pop()


def draw(logits: torch.Tensor, noise: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """One id per row of logits (B, V) -> (B,): argmax at temperature 0, else a draw from the filtered softmax,
    made as argmax(log-probabilities + Gumbel noise (B, V))."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    if cfg.top_k or cfg.top_p < 1:
        return (filtered_logprobs(logits, cfg.temperature, cfg.top_k, cfg.top_p) + noise).argmax(dim=-1)
    if cfg.temperature < 0.05:  # a tiny temperature: with the max at 0, dividing by it never overflows
        return ((logits - logits.amax(dim=-1, keepdim=True)) / cfg.temperature + noise).argmax(dim=-1)
    # noise + logits / T as one op: a tensor-by-Python-number op costs as much again as the add (batch 1)
    return torch.add(noise, logits, alpha=1 / cfg.temperature).argmax(dim=-1)  # alpha 1: exactly noise + logits


def warm_up(model: CharRNN, vocab: Vocab, prime: str, gen: torch.Generator,
            device: torch.device, precision: str = "fp32") -> tuple[torch.Tensor, State]:
    """Logits (1, V) after the prime's known characters, and the state there.

    With no usable prime the model starts as if after a newline (or a random character)."""
    known = "".join(c for c in prime if c in vocab)
    if not known:
        start = vocab.index.get("\n")
        known = vocab.chars[start if start is not None else int(torch.randint(len(vocab), (1,), generator=gen))]
    ids = torch.from_numpy(vocab.encode(known).astype("int64"))[None].to(device)  # (1, P)
    state = None
    for t in range(0, ids.shape[1], PRIME_CHUNK):
        with torch.no_grad(), autocast(device, precision):
            logits, state = model(ids[:, t : t + PRIME_CHUNK], state)  # (1, <=PRIME_CHUNK, V)
    return logits[:, -1].float(), tuple(s.float() for s in state)


def start(model: CharRNN, vocab: Vocab, primes: list[str], gen: torch.Generator, device: torch.device,
          precision: str) -> tuple[torch.Tensor, State]:
    """Logits (N, V) and state (each (layers, N, H)) after each of N primes: one warm-up per prime, in order."""
    warmed = [warm_up(model, vocab, prime, gen, device, precision) for prime in primes]
    logits = torch.cat([w[0] for w in warmed])  # (N, V)
    return logits, cat_states([w[1] for w in warmed])


def generate_batch(model: CharRNN, vocab: Vocab, cfg: SampleConfig, seed: int, device: torch.device,
                   fast: bool = True, precision: str = "fp32", primes: list[str] | None = None) -> Iterator[Piece]:
    """Pieces of cfg.num_samples samples drawn together: one step per character for every unfinished sample,
    fused (model/steps.py; bf16 precision: bf16 weights) when fast and the model allows it, else through the
    model's modules. Every sample continues cfg.prime, or (primes) sample i continues primes[i].

    A sample ends after cfg.length characters (never, if 0) or once its generated text ends with cfg.stop;
    finished samples leave the batch. Only the model's own modules need no_grad (ModelStep, warm_up): a no_grad
    around this generator would be entered and left at every character."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if primes is not None:
        n = len(primes)
        logits, state = start(model, vocab, primes, gen, device, precision)  # (N, V), each (layers, N, H)
    else:
        n = cfg.num_samples
        logits, state = warm_up(model, vocab, cfg.prime, gen, device, precision)  # (1, V)
        logits = logits.expand(n, -1)  # (N, V): every sample starts from the primed state
        state = tuple(s.expand(-1, n, -1).contiguous() for s in state)  # each (layers, N, H)
    step = step_for(model, state, fast, precision)
    noise = Noise(gen, n, len(vocab))
    on_cpu = device.type == "cpu"  # logits (always fp32) and ids need no moving: a call saved per character
    rows, tails, count = list(range(n)), [""] * n, 0  # rows[r]: the sample that batch row r belongs to
    while rows:
        cores.tick()
        g = noise.next()  # (N, V)
        ids = draw(logits if on_cpu else logits.cpu(), g if len(rows) == n else g[rows], cfg)  # (rows,)
        chosen = ids.tolist()
        count += 1
        keep = []
        for r, i in enumerate(rows):
            ch = vocab.chars[chosen[r]]
            yield i, ch
            tails[i] = (tails[i] + ch)[-len(cfg.stop):] if cfg.stop else ""
            if count == cfg.length or (cfg.stop and tails[i] == cfg.stop):
                yield i, None
            else:
                keep.append(r)
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)  # (rows',)
            step.keep(index)
            ids, rows = ids[keep], [rows[r] for r in keep]
        logits = step(ids if on_cpu else ids.to(device))  # (rows, V)


def in_order(events: Iterable[Piece], n: int, prime: str | list[str], separator: str) -> Iterator[str]:
    """The text of samples 0..n-1 one after another, separator between, each starting with the prime (or with
    its own, prime[i]).

    The first unfinished sample streams live; later ones wait in a buffer and are written when their turn
    comes, so the output equals the samples written one by one."""
    buffers: list[list[str]] = [[] for _ in range(n)]
    done, head = [False] * n, 0
    primes = [prime] * n if isinstance(prime, str) else prime
    yield primes[0]
    for i, ch in events:
        if ch is None:
            done[i] = True
        elif i == head:
            yield ch
        else:
            buffers[i].append(ch)
        while head < n and done[head]:
            head += 1
            if head < n:
                yield separator + primes[head] + "".join(buffers[head])
                buffers[head] = []


def generate(model: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float, seed: int,
             device: torch.device) -> Iterator[str]:
    """Yield length characters (0 = endless) continuing prime; characters outside the vocab are skipped."""
    cfg = SampleConfig(length=length, temperature=temperature, prime=prime)
    for _, ch in generate_batch(model, vocab, cfg, seed, device):
        if ch is not None:
            yield ch


def read_prime(prime: str, prime_file: Path | None) -> str:
    """The prime text: --prime TEXT, --prime - (stdin) or --prime-file PATH, read as UTF-8."""
    if prime_file is not None:
        return read_text(str(prime_file), flag=False)[1]
    if prime == "-":
        return read_text("-", flag=False)[1]
    return prime


def prime_lines(text: str) -> list[str]:
    """--each-line: the prime text's lines, each without its line end, in order."""
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's newline ends it; it starts no line of its own
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def blocks(cfg: SampleConfig, temperatures: list[float], headers: bool,
           between: str = "") -> Iterator[tuple[str, SampleConfig]]:
    """(text before the block, cfg at the temperature) for each temperature in order, each block keeping cfg.seed
    (as a run at that temperature alone); the text before is between (from the second block on), then the block's
    heading when headers."""
    for k, temperature in enumerate(temperatures):
        before = (between if k else "") + (f"== temperature {temperature:g} ==\n" if headers else "")
        yield before, dataclasses.replace(cfg, temperature=temperature)


def sample_text(*, checkpoint: Path | None, cfg: SampleConfig, device_name: str, precision: str, prime: str,
                prime_file: Path | None, temperatures: list[float] | None = None, each_line: bool = False,
                headers: bool = False) -> Iterator[str]:
    """`charrnn sample`: the text of cfg.num_samples samples, each the prime then its continuation, separated; or
    (each_line) one continuation per line of the prime, batched. One block per temperature, each with cfg.seed (as
    a run at that temperature alone), headed by its temperature when headers."""
    text = read_prime(prime, prime_file)
    primes = prime_lines(text) if each_line else None
    if primes == []:
        raise CharrnnError(f"{'--prime-file ' + str(prime_file) if prime_file else 'the prime'} has no lines to "
                           "continue (--each-line)")
    rows = len(primes) if primes else cfg.num_samples
    _, model, vocab, _, device, precision = load_chosen(checkpoint, device_name, precision, "sampling from",
                                                        "sample", min(rows, MAX_SAMPLES))
    unknown = vocab.unknown("".join(primes) if primes else text)
    if unknown:
        warn(f"prime characters not in the model's vocabulary, skipped: {''.join(unknown)!r}")
    cfg.prime = "" if primes else text
    for before, block in blocks(cfg, temperatures or [cfg.temperature], headers, cfg.separator):
        yield before
        if primes is None:
            yield from in_order(generate_batch(model, vocab, block, block.seed, device, precision=precision),
                                block.num_samples, block.prime, block.separator)
            continue
        for lo in range(0, len(primes), MAX_SAMPLES):  # batches of at most MAX_SAMPLES lines
            part = primes[lo : lo + MAX_SAMPLES]
            if lo:
                yield block.separator
            yield from in_order(generate_batch(model, vocab, block, block.seed, device, precision=precision,
                                               primes=part), len(part), part, block.separator)
