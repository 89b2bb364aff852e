"""One `train` command, from settings to summary: the corpus, the trainer, signals, resume, the report.

Everything is validated before anything is written; a forced-over run is removed only once the new one is ready
to start; a failure removes the directories the command created. torchrun's mode (distributed.py) is built on
these pieces; nothing here knows of it.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

import torch

from charrnn import config, cores, launch
from charrnn import device as devices
from charrnn.config import MAX_PARAMS, ModelConfig, TrainConfig
from charrnn.console import TrainReport, counted, duration, info, nats_bits, printable, warn
from charrnn.data import corpus, items, sources
from charrnn.data.batches import Streams, evaluation_streams, min_chars
from charrnn.errors import CharrnnError, CheckpointError, Interrupted, UsageError
from charrnn.generation.sample import generate
from charrnn.model import files
from charrnn.model.files import LAST
from charrnn.model.rnn import CELLS, CharRNN, num_params
from charrnn.training import finetune, rundir
from charrnn.training.stops import abort_on_signals, stop_on_signals
from charrnn.training.trainer import NonFiniteError, Trainer

MAX_CHARS = 1 << 50  # the largest corpus check_size considers (a petabyte of text)


def train(*, inputs: list[str], glob: str | None, out: Path | None, run: str | None, config_file: Path | None,
          flags: dict, force: bool, resume: bool, threads: int | None, init_from: str | None = None,
          keep_vocab: bool = False) -> None:
    """Train a new run in OUT/RUN (init_from: starting from that model, training/finetune.py), or (resume) continue
    the one there exactly where it stopped."""
    given, name, out, glob = prepare(inputs, config_file, flags, dict(run=run, out=out, glob=glob, threads=threads))
    source = finetune.load_source(init_from, keep_vocab, resume, out)
    directory, tensors, meta, model_cfg, cfg = settings(inputs, out, name, given, resume, source)
    finetune.check_apart(source, directory)
    device = devices.pick(cfg.device)
    choose_precision(cfg, model_cfg, meta, device, directory, "precision" in given)
    held = rundir.claim(directory, force, resume)
    try:
        with abort_on_signals():
            text = load_corpus(inputs, glob, out, cfg, meta, force, source)
            trainer = Trainer(build_model(text, model_cfg, cfg, device), cfg, *splits(text, cfg), device)
            if meta:
                restore(trainer, tensors, meta, text, directory)
        if not resume:
            rundir.clear(directory)
        train_loop(trainer, text, directory, inputs)
    except BaseException:
        rundir.release(held)
        raise
    rundir.unlock(held)


def prepare(inputs: list[str], config_file: Path | None, flags: dict,
            chosen: dict) -> tuple[dict, str, Path, str | None]:
    """(the settings given: --config's under the flags', the run's name, --out, --glob); torch's threads set.
    chosen: --run, --out, --glob and --threads from the command line (None: not given, so --config's, if any)."""
    config.check(flags, config.flag)
    given = {**(config.from_toml(config_file) if config_file else {}), **flags}
    filed = {k: given.pop(k) for k in config.INVOCATION if k in given}
    chosen = {**filed, **{k: v for k, v in chosen.items() if v is not None}}
    devices.set_threads(chosen.get("threads"))
    run = chosen.get("run")
    name = run if run is not None else sources.run_name(inputs)
    if run is None and len(inputs) > 1:
        info(f"run name {name!r}, from the first of {len(inputs)} inputs (--run NAME to choose another)")
    return given, name, Path(chosen.get("out", "checkpoints")), chosen.get("glob")


def settings(inputs: list[str], out: Path, name: str, given: dict, resume: bool,
             source: finetune.Source | None = None) -> tuple:
    """What train checks before it writes anything: (directory, tensors and metadata of the run resumed (else {}
    and None), ModelConfig, TrainConfig). source: the model --init-from names, whose architecture the run takes."""
    rundir.check_name(name)
    refuse_checkpoints(inputs)
    directory = out / name
    tensors, meta = rundir.read_last(directory) if resume else ({}, None)
    model_cfg, cfg = (config.for_resume(meta["model"], meta["train"], given) if meta else
                      finetune.configs(source, given) if source else config.build(given))
    return directory, tensors, meta, model_cfg, cfg


def choose_precision(cfg: TrainConfig, model_cfg: ModelConfig, meta: dict | None, device: torch.device,
                     directory: Path, asked: bool) -> None:
    """Resolve --precision on the device; the run stores what auto chose. A resume keeps the run's precision where
    it runs, and may change it like the device (--precision, or a machine without native bf16), saying so: a
    resume is bit-identical only on the same device and precision. asked: --precision was given."""
    stored = meta["train"].get("precision") if meta else None
    try:
        cfg.precision = devices.precision(cfg.precision, device, "train", model_cfg)
    except UsageError:
        if asked or not meta:  # asked for by a flag: refused as on a new run
            raise
        # the run's own, which this machine cannot run
        cfg.precision = devices.precision("auto", device, "train", model_cfg)
    if stored and cfg.precision != stored:
        info(f"{directory} trained in {stored}; it continues in {cfg.precision} on {device} (a resume is "
             "bit-identical only on the same device and precision)")


def refuse_checkpoints(inputs: list[str]) -> None:
    """A checkpoint given as an input (torch-rnn's -init_from habit, or --resume PATH) is a usage error."""
    for arg in inputs:
        if arg.endswith(".safetensors") and Path(arg).is_file():
            run_dir = Path(arg).parent
            again = shlex.join(["--out", str(run_dir.parent), "--run", run_dir.name])
            raise UsageError(f"{arg} is a checkpoint, not text (--resume takes no argument); to start a new run from "
                             f"its weights: charrnn train NEW.txt --init-from {shlex.quote(arg)}; to continue its run, "
                             f"give the corpus and the run: charrnn train CORPUS {again} --resume")


def check_size(n: int, cfg: TrainConfig) -> None:
    """A corpus too small for one training window and one validation window is an error, with the minimum."""
    if 0 < cfg.val_chars < min_chars(1, cfg.seq_len):
        raise UsageError(f"--val-chars {cfg.val_chars} is shorter than one validation window of --seq-len "
                         f"{cfg.seq_len}; give at least {min_chars(1, cfg.seq_len)}, or 0 for no cap")

    def enough(m: int) -> bool:  # the same split as Corpus.split; monotone in m
        val = corpus.held_out(m, cfg.val_frac, cfg.val_chars)
        return m - val >= min_chars(cfg.batch_size, cfg.seq_len) and val >= min_chars(1, cfg.seq_len)

    if enough(n):
        return
    low, high = n, 2 * n + 2
    while not enough(high):
        high *= 2
        if high > MAX_CHARS:  # no corpus is large enough: a --val-frac so small it holds out nothing
            raise UsageError(f"--val-frac {cfg.val_frac} with --seq-len {cfg.seq_len} holds out less than one "
                             f"validation window of any corpus up to {MAX_CHARS:,} characters; give a larger "
                             "--val-frac")
    while high - low > 1:  # the smallest m with enough(m) lies in (low, high]
        low, high = (low, (low + high) // 2) if enough((low + high) // 2) else ((low + high) // 2, high)
    raise CharrnnError(f"the corpus has {counted(n, 'character')}; --batch-size {cfg.batch_size} --seq-len "
                       f"{cfg.seq_len} --val-frac {cfg.val_frac} need at least {high:,}; give more text or lower those")


def load_corpus(inputs: list[str], glob: str | None, out: Path, cfg: TrainConfig, meta: dict | None,
                force: bool, source: finetune.Source | None = None) -> corpus.Corpus:
    """The prepared corpus, checked against the run being resumed (meta) and against the window sizes; what
    preparation found is reported here. A fine-tuning run's (source, or a resumed one's meta) is read in its
    model's characters."""
    cache = out / rundir.CACHE_DIR
    text = corpus.load(sources.collect(inputs, glob, cache, out), cache, cfg.min_char_count, cfg.encoding_errors)
    for line in text.warnings:
        warn(line)
    for line in text.notes:
        info(line)
    if meta and meta["corpus"]["fingerprint"] != text.fingerprint and not force:
        was = printable(meta["corpus"]["name"])
        raise CharrnnError(f"{text.name} is not the corpus this run was trained on ({was}, "
                           f"{differences(meta['corpus'].get('files', []), text.files)}); pass the same corpus, or "
                           "--force to continue on this one")
    text = finetune.in_model_vocab(text, meta, source, cache)
    if meta and text.vocab.chars != meta["vocab"]:
        raise CharrnnError(f"{text.name} has a different character set from the run's corpus; cannot resume")
    if not cfg.item_separator:  # items mode checks its layout once it is made (splits)
        check_size(len(text.ids), cfg)
    info(text.note)
    return text


def differences(before: list[list[str]], now: list[list[str]], most: int = 5) -> str:
    """Which inputs differ from those a run was trained on ([label, SHA-256] pairs), for the changed-corpus error."""
    old, new = dict(before), dict(now)
    kinds = [("changed", [f for f in new if f in old and new[f] != old[f]]), ("new", [f for f in new if f not in old]),
             ("gone", [f for f in old if f not in new])]
    said = [f"{kind}: {', '.join(map(printable, names[:most]))}{' ...' if len(names) > most else ''}"
            for kind, names in kinds if names]
    if not said:  # no per-file record (an older run), or the same files in another order
        return "the same files in another order" if old else "different content"
    return "different content; " + "; ".join(said)


def build_model(text: corpus.Corpus, model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device) -> CharRNN:
    """A fresh model seeded with cfg.seed, its size checked before anything is allocated."""
    devices.seed_all(cfg.seed)
    model_cfg.vocab_size = len(text.vocab)
    with torch.device("meta"):  # its size first, without allocating anything
        size = num_params(CharRNN(model_cfg, init=False))
    if size > MAX_PARAMS:
        raise UsageError(f"a {size:,}-parameter model is too large (at most {MAX_PARAMS:,}); lower --hidden-size, "
                         "--num-layers or --embed-size")
    need, free = step_bytes(model_cfg, cfg, size), devices.available_memory(device)
    if free is not None and need > free:  # found before a forced-over run is removed, not midway through a step
        raise CharrnnError(f"a training step of --batch-size {cfg.batch_size} --seq-len {cfg.seq_len} on this model "
                           f"needs about {need / 1e9:,.1f} GB of memory, more than the {free / 1e9:,.1f} GB available "
                           f"on {device}; lower --batch-size or --seq-len")
    try:
        model = CharRNN(model_cfg).to(device)
    except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
        raise CharrnnError(f"a {size:,}-parameter model does not fit in memory on {device}; lower --hidden-size, "
                           "--num-layers or --embed-size") from None
    return finetune.initialised(model, text)  # a new fine-tuning run's weights: its source's


def step_bytes(model_cfg: ModelConfig, cfg: TrainConfig, params: int) -> int:
    """A training step's memory, roughly and on the low side: per character of the (B, T) window, the embedding,
    every layer's gates and outputs kept for the backward pass (twice: values and gradients) and the logits
    three times (logits, their fp32 copy, the softmax's gradient); plus weights, gradients and AdamW's moments."""
    per_char = (model_cfg.embed_size + 2 * model_cfg.num_layers * model_cfg.hidden_size
                * (CELLS[model_cfg.cell].gates + 1) + 3 * model_cfg.vocab_size)
    return 4 * (cfg.batch_size * cfg.seq_len * per_char + 4 * params)


def splits(text: corpus.Corpus, cfg: TrainConfig) -> tuple[Streams, Streams]:
    """(training streams, validation streams) over the corpus's two parts: its text's tail, or (items mode) its
    items shuffled, the last of them held out (kept in text.items)."""
    if not cfg.item_separator:
        train_ids, val_ids = text.split(cfg.val_frac, cfg.val_chars)
    else:
        text.items = items.split(text.ids, text.vocab, cfg, text.name)
        train_ids, val_ids = text.items.train_ids, text.items.val_ids
    return Streams(train_ids, cfg.batch_size, cfg.seq_len), evaluation_streams(val_ids, cfg.batch_size, cfg.seq_len)


def restore(trainer: Trainer, tensors: dict, meta: dict, text: corpus.Corpus, directory: Path) -> None:
    """Put the trainer where last.safetensors left the run; a run that already reached its budget is a usage
    error."""
    path = directory / LAST
    try:
        trainer.load_state_dict(files.unpack(tensors, meta))
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:  # OverflowError: random.setstate
        raise CheckpointError(f"{path} cannot be resumed from: {e}"[:300] + "; it was not written by this "
                              "charrnn") from None
    if meta["corpus"]["fingerprint"] != text.fingerprint:  # --force onto another corpus: start at its beginning
        trainer.progress.window = 0
    if trainer.progress.window >= len(trainer.train_streams):
        raise CheckpointError(f"{path}: its stream cursor ({trainer.progress.window}) is past the corpus's "
                              f"{len(trainer.train_streams)} windows; it was not written by this charrnn")
    if trainer.finished():
        raise UsageError(f"{directory} already reached its budget at step {trainer.progress.step}; give a larger "
                         "--max-steps, --epochs or --minutes to train it further")
    info(f"resuming {directory} at step {trainer.progress.step}")


def train_loop(trainer: Trainer, text: corpus.Corpus, directory: Path, inputs: list[str]) -> None:
    """Run the trainer with its listeners; signals save and stop at the next step boundary."""
    model_cfg, cfg = trainer.model.cfg, trainer.cfg
    info(f"{text.name}: {text.described(cfg.val_frac, cfg.val_chars, cfg.seed)}, {len(text.vocab)} distinct; "
         f"{model_cfg.cell} "
         f"{model_cfg.num_layers}x{model_cfg.hidden_size}, {num_params(trainer.model):,} parameters on "
         f"{trainer.device}, {cfg.precision}, {cores.shown()}")
    if len(text.vocab) == 1:
        warn(f"the corpus has a single distinct character ({text.vocab.chars[0]!r}): the model has nothing to learn")
    if cfg.warmup_steps > trainer.total_steps:
        warn(f"--warmup-steps {cfg.warmup_steps} is longer than the {trainer.total_steps:,.0f}-step budget: the "
             f"learning rate never reaches --lr {cfg.lr}")
    recorder = rundir.Recorder(directory, trainer, text)
    if text.items is not None:  # at every start: a resume with --force may have changed the items
        rundir.remember_items(directory, text)
    trainer.subscribe(recorder)
    trainer.subscribe(TrainReport(lambda: max(trainer.progress.step / trainer.total_steps, trainer.time_frac()),
                                  lambda: preview(trainer, text.vocab), trainer.total_steps))
    with stop_on_signals(trainer) as received:
        try:
            p = trainer.run()
        except NonFiniteError as e:
            raise CharrnnError(f"{e}; {recorder.last_good()}") from None
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "allocate memory" not in str(e):
                raise
            raise CharrnnError(f"out of memory at step {trainer.progress.step + 1}; {recorder.last_good()}; lower "
                               "--batch-size or --seq-len") from None
        except KeyboardInterrupt:
            raise Interrupted(130, f"aborted by a second Ctrl-C; {recorder.last_good()}") from None
    if received or trainer.stop_signal:  # the signal this process received, or (distributed) another's
        sig = received[0] if received else trainer.stop_signal
        info(f"stopped by {signal.Signals(sig).name} at step {p.step}; saved {directory / LAST}. "
             f"Resume with: {resume_command(inputs, directory)}")
        raise Interrupted(128 + sig)
    info(f"done: best val {nats_bits(p.best_val)} at step {p.best_step}; {counted(p.step, 'step')} in "
         f"{duration(p.elapsed_s)}; files in {directory}/; plot the losses: charrnn plot {shlex.quote(str(directory))}")


def resume_command(inputs: list[str], directory: Path) -> str:
    """The command line that resumes the run, launched as this process was (charrnn, or torchrun)."""
    return shlex.join([*launch.launcher(), "train", *inputs, "--out", str(directory.parent), "--run",
                       directory.name, "--resume"])


def preview(trainer: Trainer, vocab) -> str:
    """200 characters at temperature 0.8 from the model as it is (its own generator: training RNG untouched)."""
    text = "".join(generate(trainer.model, vocab, "", 200, 0.8, trainer.cfg.seed, trainer.device))
    trainer.model.train()
    return text
