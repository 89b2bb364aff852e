"""What each command does, in library terms: the CLI parses flags and calls these."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from charrnn import checkpoint, config, corpus, run
from charrnn import device as devices
from charrnn.batches import Streams, min_chars
from charrnn.checkpoint import LAST
from charrnn.config import TrainConfig
from charrnn.console import TrainReport, info, nats_bits, warn
from charrnn.errors import CharrnnError, Interrupted
from charrnn.model import CharRNN, num_params
from charrnn.sample import generate
from charrnn.train import NonFiniteError, Trainer


def check_size(n: int, cfg: TrainConfig) -> None:
    """A corpus too small for one training window and one validation window is an error, with the minimum."""
    n_val = int(n * cfg.val_frac)
    if n - n_val >= min_chars(cfg.batch_size, cfg.seq_len) and n_val >= min_chars(1, cfg.seq_len):
        return
    need = n
    while not (need - int(need * cfg.val_frac) >= min_chars(cfg.batch_size, cfg.seq_len)
               and int(need * cfg.val_frac) >= min_chars(1, cfg.seq_len)):
        need = max(need + 1, int(need * 1.01))
    raise CharrnnError(f"the corpus has {n:,} characters; --batch-size {cfg.batch_size} --seq-len {cfg.seq_len} "
                       f"--val-frac {cfg.val_frac} need at least {need:,}; give more text or lower those")


def train_run(source: str, directory: Path, given: dict, force: bool, resume: bool) -> None:
    """Train a new run in directory, or (resume) continue the one there exactly where it stopped."""
    text = corpus.load(source)
    if resume:
        tensors, meta = run.read_last(directory)
        model_cfg, cfg = config.for_resume(meta["model"], meta["train"], given)
        if meta["corpus"]["fingerprint"] != text.fingerprint and not force:
            raise CharrnnError(f"{text.name} is not the corpus this run was trained on ({meta['corpus']['name']}, "
                               "different content); pass the same corpus, or --force to continue on this one")
        if text.vocab.chars != meta["vocab"]:
            raise CharrnnError(f"{text.name} has a different character set from the run's corpus; cannot resume")
    else:
        model_cfg, cfg = config.build(given)
        cfg = cfg.budgeted()
    check_size(len(text.ids), cfg)
    train_ids, val_ids = text.split(cfg.val_frac)
    run.prepare(directory, force, resume)
    device = devices.pick(cfg.device)
    devices.seed_all(cfg.seed)
    model_cfg.vocab_size = len(text.vocab)
    model = CharRNN(model_cfg).to(device)
    val = Streams(val_ids, min(cfg.batch_size, (len(val_ids) - 1) // cfg.seq_len), cfg.seq_len, full_windows=False)
    trainer = Trainer(model, cfg, Streams(train_ids, cfg.batch_size, cfg.seq_len), val, device)
    if resume:
        run.restore(trainer, tensors, meta)
        info(f"resuming {directory} at step {trainer.progress.step}")
    info(f"{text.name}: {len(text.ids):,} characters, {len(text.vocab)} distinct; {model_cfg.cell} "
         f"{model_cfg.num_layers}x{model_cfg.hidden_size}, {num_params(model):,} parameters on {device}")

    def preview() -> str:
        text_out = "".join(generate(model, text.vocab, "", 200, 0.8, cfg.seed, device))
        model.train()
        return text_out

    def fraction_done() -> float:
        return max(trainer.progress.step / trainer.total_steps, trainer.time_frac())

    recorder = run.Recorder(directory, trainer, text)
    trainer.subscribe(recorder)
    trainer.subscribe(TrainReport(fraction_done, preview))
    with stop_on_signals(trainer) as received:
        try:
            p = trainer.run()
        except NonFiniteError as e:
            raise CharrnnError(f"{e}; {recorder.last_good()}") from None
    if received:
        sig = received[0]
        info(f"stopped by {signal.Signals(sig).name} at step {p.step}; saved {directory / LAST}. "
             f"Resume with: charrnn train {source} --out {directory.parent} --run {directory.name} --resume")
        raise Interrupted(128 + sig)
    info(f"done: best val {nats_bits(p.best_val)} at step {p.best_step}; {p.step} steps in "
         f"{p.elapsed_s:.0f} s; files in {directory}/")


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM ask the trainer to stop at the next step boundary (it then saves);
    a second SIGINT aborts at once. Yields the list of signals received."""
    received: list[int] = []

    def handler(sig, frame):
        if received and sig == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(sig)
        trainer.stop_requested = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def sample_text(target: Path | None, prime: str, length: int, temp: float, seed: int, device_name: str):
    """Yield the prime, then length generated characters."""
    device = devices.pick(device_name)
    path = checkpoint.resolve(target)
    model, vocab, _ = run.load_model(path, device)
    info(f"sampling from {path}")
    unknown = vocab.unknown(prime)
    if unknown:
        warn(f"prime characters not in the model's vocabulary, skipped: {''.join(unknown)!r}")
    yield prime
    yield from generate(model, vocab, prime, length, temp, seed, device)


def describe(target: Path | None) -> str:
    path = checkpoint.resolve(target)
    model, vocab, meta = run.load_model(path, devices.pick("cpu"))
    m, p = meta["model"], meta["progress"]
    preview = "".join(vocab.chars[:60]).encode("unicode_escape").decode("ascii")
    best = nats_bits(p["best_val"]) if p.get("best_val") is not None else "not evaluated yet"
    lines = [
        f"checkpoint   {path}",
        f"model        {m['cell']}, {m['num_layers']} layers x {m['hidden_size']} units, embed {m['embed_size']}, "
        f"dropout {m['dropout']}",
        f"parameters   {num_params(model):,}",
        f"vocabulary   {len(vocab)} characters: {preview}{' ...' if len(vocab) > 60 else ''}",
        f"corpus       {meta['corpus']['name']} ({meta['corpus']['fingerprint'][:19]}...)",
        f"progress     step {p['step']}, epoch {p['epoch']}, {p['elapsed_s']:.0f} s of training",
        f"best val     {best} at step {p['best_step']}",
    ]
    return "\n".join(lines)


