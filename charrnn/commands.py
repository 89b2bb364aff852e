"""What each command does, in library terms: the CLI parses flags and calls these."""

from __future__ import annotations

from pathlib import Path

from charrnn import checkpoint, corpus, run, sources
from charrnn import device as devices
from charrnn.batches import Streams, min_chars
from charrnn.config import ModelConfig, TrainConfig
from charrnn.console import TrainReport, info, nats_bits, warn
from charrnn.errors import CharrnnError
from charrnn.model import CharRNN, num_params
from charrnn.sample import generate
from charrnn.train import Trainer

CACHE_DIR = ".cache"  # under --out: id caches shared by every run there, deleted with the checkpoints


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


def train_run(inputs: list[str], glob: str | None, directory: Path, model_cfg: ModelConfig, cfg: TrainConfig,
              force: bool) -> None:
    cache = directory.parent / CACHE_DIR
    text = corpus.load(sources.resolve(inputs, glob, cache), cache, cfg.min_char_count)
    check_size(len(text.ids), cfg)
    train_ids, val_ids = text.split(cfg.val_frac)
    run.prepare(directory, force)
    device = devices.pick(cfg.device)
    devices.seed_all(cfg.seed)
    model_cfg.vocab_size = len(text.vocab)
    model = CharRNN(model_cfg).to(device)
    val = Streams(val_ids, min(cfg.batch_size, (len(val_ids) - 1) // cfg.seq_len), cfg.seq_len, full_windows=False)
    trainer = Trainer(model, cfg, Streams(train_ids, cfg.batch_size, cfg.seq_len), val, device)
    info(f"{text.name}: {len(text.ids):,} characters, {len(text.vocab)} distinct; {model_cfg.cell} "
         f"{model_cfg.num_layers}x{model_cfg.hidden_size}, {num_params(model):,} parameters on {device}")

    def preview() -> str:
        text_out = "".join(generate(model, text.vocab, "", 200, 0.8, cfg.seed, device))
        model.train()
        return text_out

    def fraction_done() -> float:
        return max(trainer.progress.step / trainer.total_steps, trainer.time_frac())

    trainer.subscribe(run.Recorder(directory, trainer, text))
    trainer.subscribe(TrainReport(fraction_done, preview))
    p = trainer.run()
    info(f"done: best val {nats_bits(p.best_val)} at step {p.best_step}; {p.step} steps in "
         f"{p.elapsed_s:.0f} s; files in {directory}/")


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


