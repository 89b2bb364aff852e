"""What each command does, in library terms: the CLI parses flags and calls these."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from charrnn import checkpoint, config, corpus, run, sources
from charrnn import device as devices
from charrnn.batches import Streams, evaluation_streams, min_chars
from charrnn.checkpoint import LAST
from charrnn.config import MAX_PARAMS, ModelConfig, SampleConfig, TrainConfig
from charrnn.console import TrainReport, info, launched, nats_bits, note, warn
from charrnn.errors import CharrnnError, CheckpointError, Interrupted, UsageError
from charrnn.model import CharRNN, num_params
from charrnn.sample import generate, generate_batch, in_order
from charrnn.score import read_lines, score_lines, score_text
from charrnn.train import NonFiniteError, Trainer


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
    while high - low > 1:  # the smallest m with enough(m) lies in (low, high]
        low, high = (low, (low + high) // 2) if enough((low + high) // 2) else ((low + high) // 2, high)
    need = high
    raise CharrnnError(f"the corpus has {n:,} characters; --batch-size {cfg.batch_size} --seq-len {cfg.seq_len} "
                       f"--val-frac {cfg.val_frac} need at least {need:,}; give more text or lower those")


def train_run(inputs: list[str], glob: str | None, out: Path, name: str, given: dict, force: bool,
              resume: bool) -> None:
    """Train a new run in OUT/NAME, or (resume) continue the one there exactly where it stopped.

    Everything is validated before anything is written; a forced-over run is removed only once the new one
    is ready to start; a failure removes the directories this command created. Under torchrun, each process
    runs distributed.train_run instead."""
    if launched():
        from charrnn import distributed

        return distributed.train_run(inputs, glob, out, name, given, force, resume)
    directory, tensors, meta, model_cfg, cfg, device = train_settings(inputs, out, name, given, resume, devices.pick)
    created = run.claim(directory, force, resume)
    try:
        with abort_on_signals():
            text = load_corpus(inputs, glob, out / run.CACHE_DIR, cfg, meta, force)
            trainer = build_trainer(text, model_cfg, cfg, device)
            if meta:
                restore(trainer, tensors, meta, text, directory)
        if not resume:
            run.clear(directory)
        train_loop(trainer, text, directory, inputs)
    except BaseException:
        run.release(directory, created)
        raise


def train_settings(inputs: list[str], out: Path, name: str, given: dict, resume: bool, pick) -> tuple:
    """What train checks before it writes anything: (directory, tensors and metadata of the run resumed (else {}
    and None), ModelConfig, TrainConfig, device); pick(name) chooses the device."""
    run.check_name(name)
    refuse_checkpoints(inputs)
    directory = out / name
    tensors, meta = run.read_last(directory) if resume else ({}, None)
    model_cfg, cfg = config.for_resume(meta["model"], meta["train"], given) if meta else config.build(given)
    device = pick(cfg.device)
    cfg.precision = devices.precision(cfg.precision, device)  # the run stores what auto chose; resume keeps it
    if meta and cfg.precision != meta["train"].get("precision", cfg.precision):
        raise UsageError(f"{directory} trains in {meta['train']['precision']} and resume keeps it; leave out "
                         "--precision")
    return directory, tensors, meta, model_cfg, cfg, device


def refuse_checkpoints(inputs: list[str]) -> None:
    """A checkpoint given as an input (torch-rnn's -init_from habit, or --resume PATH) is a usage error."""
    for arg in inputs:
        if arg.endswith(".safetensors") and Path(arg).is_file():
            run_dir = Path(arg).parent
            again = shlex.join(["--out", str(run_dir.parent), "--run", run_dir.name])
            raise UsageError(f"{arg} is a checkpoint, not text (--resume takes no argument); to continue its run, "
                             f"give the corpus and the run: charrnn train CORPUS {again} --resume")


@contextlib.contextmanager
def abort_on_signals():
    """Before training starts, SIGINT/SIGTERM end the command at once (temporary files are removed on the way
    out); nothing has been saved yet."""
    def handler(sig, frame):
        raise Interrupted(128 + sig, f"stopped by {signal.Signals(sig).name} before training began; nothing saved")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def restore(trainer: Trainer, tensors: dict, meta: dict, text: corpus.Corpus, directory: Path) -> None:
    """Put the trainer where the run stopped; a run that already reached its budget is a usage error."""
    run.restore(trainer, tensors, meta, directory / LAST)
    if meta["corpus"]["fingerprint"] != text.fingerprint:  # --force onto another corpus: start at its beginning
        trainer.progress.window = 0
    if trainer.progress.window >= len(trainer.train):
        raise CheckpointError(f"{directory / LAST}: its stream cursor ({trainer.progress.window}) is past the "
                              f"corpus's {len(trainer.train)} windows; it was not written by this charrnn")
    if trainer.finished():
        raise UsageError(f"{directory} already reached its budget at step {trainer.progress.step}; give a larger "
                         "--max-steps, --epochs or --minutes to train it further")
    info(f"resuming {directory} at step {trainer.progress.step}")


def train_loop(trainer: Trainer, text: corpus.Corpus, directory: Path, inputs: list[str],
               launcher: tuple[str, ...] = ("charrnn",)) -> None:
    """Run the trainer with its listeners; signals save and stop at the next step boundary. launcher: how the
    resume command that a signal prints starts."""
    model_cfg, cfg = trainer.model.cfg, trainer.cfg
    held = corpus.held_out(len(text.ids), cfg.val_frac, cfg.val_chars)
    info(f"{text.name}: {len(text.ids):,} characters ({held:,} held out), {len(text.vocab)} distinct; {model_cfg.cell} "
         f"{model_cfg.num_layers}x{model_cfg.hidden_size}, {num_params(trainer.model):,} parameters on "
         f"{trainer.device}, {cfg.precision}, {torch.get_num_threads()} threads")
    if len(text.vocab) == 1:
        warn(f"the corpus has a single distinct character ({text.vocab.chars[0]!r}): the model has nothing to learn")
    if cfg.warmup_steps > trainer.total_steps:
        warn(f"--warmup-steps {cfg.warmup_steps} is longer than the {trainer.total_steps:,.0f}-step budget: the "
             f"learning rate never reaches --lr {cfg.lr}")
    recorder = run.Recorder(directory, trainer, text)
    trainer.subscribe(recorder)
    trainer.subscribe(TrainReport(lambda: max(trainer.progress.step / trainer.total_steps, trainer.time_frac()),
                                  lambda: preview(trainer, text.vocab)))
    with stop_on_signals(trainer) as received:
        try:
            p = trainer.run()
        except NonFiniteError as e:
            raise CharrnnError(f"{e}; {recorder.last_good()}") from None
        except KeyboardInterrupt:
            raise Interrupted(130, f"aborted by a second Ctrl-C; {recorder.last_good()}") from None
    if received or trainer.stop_signal:  # the signal this process received, or (distributed) another's
        sig = received[0] if received else trainer.stop_signal
        info(f"stopped by {signal.Signals(sig).name} at step {p.step}; saved {directory / LAST}. "
             f"Resume with: {resume_command(launcher, inputs, directory)}")
        raise Interrupted(128 + sig)
    info(f"done: best val {nats_bits(p.best_val)} at step {p.best_step}; {p.step} steps in "
         f"{p.elapsed_s:.0f} s; files in {directory}/; plot the losses: charrnn plot {shlex.quote(str(directory))}")


def resume_command(launcher: tuple[str, ...], inputs: list[str], directory: Path) -> str:
    return shlex.join([*launcher, "train", *inputs, "--out", str(directory.parent), "--run", directory.name,
                       "--resume"])


def load_corpus(inputs: list[str], glob: str | None, cache: Path, cfg: TrainConfig, meta: dict | None,
                force: bool) -> corpus.Corpus:
    """The prepared corpus, checked against the run being resumed (meta) and against the window sizes."""
    text = corpus.load(sources.resolve(inputs, glob, cache), cache, cfg.min_char_count, cfg.encoding_errors)
    if meta and meta["corpus"]["fingerprint"] != text.fingerprint and not force:
        raise CharrnnError(f"{text.name} is not the corpus this run was trained on ({meta['corpus']['name']}, "
                           "different content); pass the same corpus, or --force to continue on this one")
    if meta and text.vocab.chars != meta["vocab"]:
        raise CharrnnError(f"{text.name} has a different character set from the run's corpus; cannot resume")
    check_size(len(text.ids), cfg)
    info(text.note)
    return text


def build_trainer(text: corpus.Corpus, model_cfg: ModelConfig, cfg: TrainConfig, device, make=Trainer) -> Trainer:
    """A fresh, seeded model and trainer (made by make: Trainer's signature) over the corpus's train and
    validation splits."""
    train_ids, val_ids = text.split(cfg.val_frac, cfg.val_chars)
    devices.seed_all(cfg.seed)
    model_cfg.vocab_size = len(text.vocab)
    with torch.device("meta"):  # its size first, without allocating anything
        size = num_params(CharRNN(model_cfg, init=False))
    if size > MAX_PARAMS:
        raise UsageError(f"a {size:,}-parameter model is too large (at most {MAX_PARAMS:,}); lower --hidden-size, "
                         "--num-layers or --embed-size")
    try:
        model = CharRNN(model_cfg).to(device)
    except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
        raise CharrnnError(f"a {size:,}-parameter model does not fit in memory on {device}; lower --hidden-size, "
                           "--num-layers or --embed-size") from None
    val = evaluation_streams(val_ids, cfg.batch_size, cfg.seq_len)
    return make(model, cfg, Streams(train_ids, cfg.batch_size, cfg.seq_len), val, device)


def preview(trainer: Trainer, vocab) -> str:
    """200 characters at temperature 0.8 from the model as it is (its own generator: training RNG untouched)."""
    text = "".join(generate(trainer.model, vocab, "", 200, 0.8, trainer.cfg.seed, trainer.device))
    trainer.model.train()
    return text


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
        trainer.stop_signal = trainer.stop_signal or sig

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def load_chosen(target: Path | None, device_name: str, precision: str, verb: str):
    """(model, vocab, meta, device, precision) of a checkpoint, the device and precision checked first; says at
    a terminal which file, unless a file was named."""
    device = devices.pick(device_name)
    precision = devices.precision(precision, device)
    path = checkpoint.resolve(target)
    model, vocab, meta = run.load_model(path, device)
    if target is None or target.is_dir():
        note(f"{verb} {path}")
    return model, vocab, meta, device, precision


def read_prime(prime: str, prime_file: Path | None) -> str:
    """The prime text: --prime TEXT, --prime - (stdin) or --prime-file PATH, read as UTF-8."""
    if prime_file is not None:
        return corpus.read_text(str(prime_file), flag=False)[1]
    if prime == "-":
        return corpus.read_text("-", flag=False)[1]
    return prime


def sample_text(target: Path | None, cfg: SampleConfig, device_name: str, precision: str) -> Iterator[str]:
    """Yield the text of cfg.num_samples samples, each the prime then its continuation, separated."""
    model, vocab, _, device, precision = load_chosen(target, device_name, precision, "sampling from")
    unknown = vocab.unknown(cfg.prime)
    if unknown:
        warn(f"prime characters not in the model's vocabulary, skipped: {''.join(unknown)!r}")
    events = generate_batch(model, vocab, cfg, cfg.seed, device, precision=precision)
    yield from in_order(events, cfg.num_samples, cfg.prime, cfg.separator)


def warn_unknown(unknown: list[str], count: int) -> None:
    if unknown:
        warn(f"{count:,} character(s) outside the model's vocabulary skipped, not scored: {''.join(unknown)!r}")


def score_report(source: str, target: Path | None, device_name: str, precision: str, as_json: bool,
                 errors: str) -> str:
    """The score of a whole text, as aligned `name value` lines or as JSON."""
    model, vocab, meta, device, precision = load_chosen(target, device_name, precision, "scoring with")
    _, text = corpus.read_text(source, errors)
    train_cfg = {**dataclasses.asdict(TrainConfig()), **meta["train"]}
    result = score_text(model, vocab, text, train_cfg["batch_size"], train_cfg["seq_len"], device,
                        precision)
    warn_unknown(result.oov_chars, result.oov)
    report = result.as_dict()
    if as_json:
        return json.dumps(report, ensure_ascii=False)
    report["oov_chars"] = repr("".join(result.oov_chars))  # quoted, control characters escaped
    if not result.oov:
        del report["oov_chars"]
    return "\n".join(f"{k:<14} {v:.4f}" if isinstance(v, float) else f"{k:<14} {v}" for k, v in report.items())


def score_each_line(source: str, target: Path | None, device_name: str, precision: str, as_json: bool,
                    errors: str) -> Iterator[str]:
    """One output line per input line, as each arrives: `bits_per_char<TAB>line`, or JSON Lines."""
    model, vocab, _, device, precision = load_chosen(target, device_name, precision, "scoring with")
    unknown: set[str] = set()
    count = 0
    for s in score_lines(model, vocab, read_lines(source, errors), device, precision):
        unknown.update(s.unknown)
        count += s.oov
        if as_json:
            yield json.dumps({"bits_per_char": None if math.isnan(s.bits_per_char) else s.bits_per_char,
                              "scored": s.scored, "line": s.line}, ensure_ascii=False) + "\n"
        else:
            yield f"{s.bits_per_char:.4f}\t{s.line}\n"
    warn_unknown(sorted(unknown), count)


def describe(target: Path | None) -> str:
    path = checkpoint.resolve(target)
    model, vocab, meta = run.load_model(path, devices.pick("cpu"))
    m, p = meta["model"], meta["progress"]
    epoch = meta.get("epoch", p["epoch"])  # fractional: completed passes plus the part of the current one
    preview = "".join(vocab.chars[:60]).encode("unicode_escape").decode("ascii")
    best = "not evaluated yet"
    if p.get("best_val") is not None:
        best = f"{nats_bits(p['best_val'])} at step {p['best_step']}"
    lines = [
        f"checkpoint   {path}",
        f"model        {m['cell']}, {m['num_layers']} layer{'s' * (m['num_layers'] != 1)} x {m['hidden_size']} units, "
        f"embed {m['embed_size']}, "
        f"dropout {m['dropout']}",
        f"parameters   {num_params(model):,}",
        f"vocabulary   {len(vocab)} characters: {preview}{' ...' if len(vocab) > 60 else ''}",
        f"corpus       {meta['corpus']['name']} ({meta['corpus']['fingerprint'][:19]}...)",
        f"progress     step {p['step']}, epoch {epoch:.2f}, {p['elapsed_s']:.0f} s of training",
        f"best val     {best}",
    ]
    return "\n".join(lines)


def cells_report(source: str, target: Path | None, pairs: list[tuple[int, int]], state: str | None,
                 find: str | None, top: int, max_chars: int | None, page: Path | None, values: bool,
                 colour: bool, device_name: str) -> Iterator[str]:
    """`charrnn cells`: yields what goes to stdout (the text, coloured or as value lines, unless only --html
    was asked for; the --find table when the text does not go to stdout), says the rest on stderr and writes
    the --html page. Characters outside the model's vocabulary are left out, with a warning."""
    from charrnn import cells, cellview, signals
    from charrnn.score import drop_unknown

    signal = signals.parse(find) if find else None
    model, vocab, meta, device, _ = load_chosen(target, device_name, "fp32", "reading")
    states, units = cells.states_of(model, state), cells.check_units(model, pairs, state)
    name, text = corpus.read_text(source)
    text, unknown = drop_unknown(vocab, text)
    if unknown:
        warn(f"characters outside the model's vocabulary left out: {''.join(unknown)!r}")
    if not text:
        raise CharrnnError(f"{name} has no characters in the model's vocabulary; nothing to read")
    ids = vocab.encode(text)  # (N,)
    shown = text[:max_chars] if max_chars is not None else text
    to_stdout = bool(shown) and (page is None or values)
    found: dict = {}
    if signal is not None:
        ranked = cells.rank(model, ids, signal(text), states, device)
        found, units = {u: rho for u, rho, _ in ranked}, units or [ranked[0][0]]
        for line in cells.table(ranked[:top]):
            if to_stdout:  # the text goes there
                info(line)
            else:
                yield line + "\n"
    if len(shown) < len(text):
        note(f"showing the first {len(shown):,} of {len(text):,} characters")
    if shown:
        rec = cells.collect(model, ids[: len(shown)], units, device)
        labels = [f"layer {u.layer}, unit {u.index} ({u}), {u.state} state"
                  + (f": rank correlation {found[u]:+.3f} with {find}" if u in found else "") for u in units]
        if page is not None:
            title = f"charrnn cells: {name}, model trained on {meta['corpus']['name']}"
            cellview.write_page(page, cellview.report_page(title, shown, units, labels, rec, vocab))
        if to_stdout:
            yield from cellview.lines(shown, labels, rec.values, colour and not values)
