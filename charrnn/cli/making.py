"""The commands that make things: `train` (a model), `sample` (text), `corpus list` and `corpus get` (corpora),
`cache` (what the corpora prepared for training take on disk)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn import config as settings
from charrnn.cli import (
    Checkpoint,
    CheckpointOpt,
    Device,
    Precision,
    Threads,
    app,
    check_items,
    choice,
    corpus_app,
    flag_text,
    one_checkpoint,
    opt,
    reports_errors,
    temperatures,
    threads_and_checks,
)
from charrnn.console import info
from charrnn.errors import UsageError
from charrnn.streams import stdout_open, write_stream

M, T, S = settings.ModelConfig(), settings.TrainConfig(), settings.SampleConfig()  # defaults for --help
CELLS = ", ".join(settings.CELLS)


@app.command()
@reports_errors
def train(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUTS", help="UTF-8 text files, directories (searched recursively; hidden, binary and UTF-16 files "
        "skipped) or - for stdin, joined in the order given.", show_default=False)],
    glob: opt(str, "Only files matching this pattern in directories, e.g. '*.c'.") = None,
    min_char_count: opt(int, "Characters seen fewer times map to U+FFFD. Default: 0 (off).") = None,
    encoding_errors: choice(settings.ENCODING_ERRORS, "Invalid UTF-8 in the corpus: strict (refuse it), replace "
                            "(each bad byte becomes U+FFFD) or skip (drop it). Default: strict.") = None,
    cell: choice(settings.CELLS, f"{CELLS}. Default: {M.cell}.") = None,
    hidden_size: opt(int, f"Units per layer. Default: {M.hidden_size}.") = None,
    num_layers: opt(int, f"Recurrent layers. Default: {M.num_layers}.") = None,
    embed_size: opt(int, f"Embedding width. Default: {M.embed_size}.") = None,
    dropout: opt(float, f"Dropout. Default: {M.dropout}.") = None,
    batch_size: opt(int, f"Parallel streams B. Default: {T.batch_size} ({settings.FINETUNE['batch_size']} with "
                    "--init-from).") = None,
    seq_len: opt(int, f"Characters per BPTT window T. Default: {T.seq_len}.") = None,
    lr: opt(float, f"Peak AdamW learning rate. Default: {T.lr} ({settings.FINETUNE['lr']:g} with --init-from).")
    = None,
    weight_decay: opt(float, f"AdamW weight decay. Default: {T.weight_decay} ({settings.FINETUNE['weight_decay']} "
                      "with --init-from).") = None,
    warmup_steps: opt(int, f"Linear warmup steps. Default: {T.warmup_steps}.") = None,
    grad_clip: opt(float, f"Global grad-norm clip, 0 = off. Default: {T.grad_clip}.") = None,
    max_steps: opt(int, f"Step budget. Default: {settings.DEFAULT_STEPS} if no budget is given.") = None,
    epochs: opt(float, "Budget in passes over the training text.") = None,
    minutes: opt(float, "Wall-clock budget in minutes.") = None,
    log_every: opt(int, f"Steps between progress/metrics lines. Default: {T.log_every}.") = None,
    eval_every: opt(int, f"Steps between validations and checkpoints. Default: {T.eval_every}.") = None,
    val_frac: opt(float, f"Held-out tail for validation. Default: {T.val_frac}.") = None,
    val_chars: opt(int, f"At most this many held-out characters; the rest trains. 0 = no cap. Default: "
                   f"{T.val_chars:,}.") = None,
    items: Annotated[bool, typer.Option("--items", help="The text is a list, one item per line (names, titles): "
                                        "items are shuffled with --seed, whole items held out, and the run "
                                        "remembers them so sample --items can tell new items from copies.")]
    = False,
    item_separator: opt(str, "What separates items instead of a line end, e.g. '\\n\\n' for a blank line "
                        "(\\n \\t \\r \\\\ understood); implies --items.") = None,
    seed: opt(int, f"Random seed. Default: {T.seed}.") = None,
    device: choice(settings.DEVICES, "auto (cuda, then mps, then cpu), cpu, cuda or mps. Default: auto.") = None,
    precision: choice(settings.PRECISIONS, "auto (bf16 autocast where the device has native bf16 and it was "
                      "measured faster and as good for the model: on a CPU the LSTM from 256 units, on CUDA the LSTM "
                      "and GRU; else fp32), "
                      "fp32 or bf16; weights and optimizer state stay fp32. Default: auto.") = None,
    threads: Threads = None,
    run: opt(str, "Run name. Default: the file's stem, stdin for -, or the directory's name.") = None,
    out: Annotated[Path | None, typer.Option(help="Directory that holds runs. Default: checkpoints.",
                                             show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings: any of these flags but --resume, "
                                                "--force and --config, named with _; flags override it.")] = None,
    decay_steps: opt(int, "Cosine decay horizon in steps. Default: the step budget.") = None,
    save_every: opt(int, "Also save last.safetensors every N steps.") = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT/RUN exactly where it stopped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run; with --resume, accept a "
                                        "changed corpus.")] = False,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", metavar="RUN_OR_FILE", help="Fine-tune: start a new run from this model (a model file, a run "
        "directory: its best, else last; or a run's name under --out). Its shape and weights are taken, characters "
        "matched by what they are (the text's new ones added to the vocabulary, starting near probability 0); the "
        "optimizer, schedule and budget start afresh. With it, --lr defaults to "
        f"{settings.FINETUNE['lr']:g}, --batch-size to {settings.FINETUNE['batch_size']}, --weight-decay to "
        f"{settings.FINETUNE['weight_decay']:g} and --dropout to the model's, at least "
        f"{settings.FINETUNE_DROPOUT:g} (a small text overfits).", show_default=False)] = None,
    keep_vocab: Annotated[bool, typer.Option("--keep-vocab", help="With --init-from: keep that model's vocabulary; "
                                             "characters it lacks are read as U+FFFD (refused if it has none).")]
    = False,
) -> None:
    """Train a model on INPUTS; checkpoints land in OUT/RUN/."""
    flags = dict(min_char_count=min_char_count, encoding_errors=encoding_errors, cell=cell, hidden_size=hidden_size,
                 num_layers=num_layers, embed_size=embed_size, dropout=dropout, batch_size=batch_size,
                 seq_len=seq_len, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip,
                 max_steps=max_steps, epochs=epochs, minutes=minutes, log_every=log_every, eval_every=eval_every,
                 val_frac=val_frac, val_chars=val_chars, seed=seed, device=device, precision=precision,
                 decay_steps=decay_steps, save_every=save_every,
                 item_separator=flag_text("--item-separator", item_separator, escapes=True) if item_separator
                 is not None else "\n" if items else None)
    from charrnn.launch import launched

    if launched():  # one process of a torchrun launch
        from charrnn.training.distributed import train as run_training
    else:
        from charrnn.training.session import train as run_training
    run_training(inputs=inputs, glob=glob, out=out, run=run, config_file=config, force=force, resume=resume,
                 flags={k: v for k, v in flags.items() if v is not None}, threads=threads,
                 init_from=init_from, keep_vocab=keep_vocab)


@app.command()
@reports_errors
def sample(
    checkpoint: Checkpoint = None,
    checkpoint_opt: CheckpointOpt = None,
    temp: Annotated[str, typer.Option("--temp", "--temperature", "-t", help="Softmax temperature; 0 = always the "
                                      "likeliest. Several, comma-separated (0.5,0.8,1.2): one block each, with "
                                      "the same --seed.")] = f"{S.temperature:g}",
    top_k: Annotated[int, typer.Option(help="Draw only from the K likeliest characters; 0 = off.")] = S.top_k,
    top_p: Annotated[float, typer.Option(help="Nucleus: draw only from the likeliest characters whose "
                                         "probabilities sum to P, in (0, 1]; 1 = off.")] = S.top_p,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate after the prime, per "
                                        "sample; 0 = endless (until stdout closes or Ctrl-C).")] = S.length,
    prime: Annotated[str, typer.Option("--prime", "-p", help="Text to start from, printed first; - reads it "
                                       "from stdin.")] = "",
    prime_file: Annotated[Path | None, typer.Option(help="Read the prime from this UTF-8 file.")] = None,
    each_line: Annotated[bool, typer.Option("--each-line", help="One continuation per line of --prime-file (or "
                                            "--prime -), batched, in the file's order.")] = False,
    num_samples: Annotated[int, typer.Option(help="Samples drawn together as one batch, written one after "
                                             "another.")] = S.num_samples,
    separator: Annotated[str, typer.Option(help="Written between samples (\\n \\t \\r \\\\ understood).")]
    = S.separator.encode("unicode_escape").decode(),
    stop: Annotated[str | None, typer.Option(help="A sample ends once it generates this string, which is written "
                                             "(\\n \\t \\r \\\\ understood); else at --length.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same checkpoint + same seed + same options = same text.")]
    = None,
    headers: Annotated[bool, typer.Option("--headers", help="Head each temperature's block with a line naming it "
                                          "(the default when stdout is a terminal and several are given).")]
    = False,
    items: Annotated[int, typer.Option("--items", help="Write N items (a run trained with --items, or any with "
                                       "--item-separator), each begun after the separator and ended by it; "
                                       "--length caps each item.")] = 0,
    item_separator: Annotated[str | None, typer.Option(help="Ends each item (\\n \\t \\r \\\\ understood). "
                                                       "Default: the run's.")] = None,
    new_only: Annotated[bool, typer.Option("--new-only", help="Write only items that copy no training or held-out "
                                           "item, drawing until N are written.")] = False,
    unique: Annotated[bool, typer.Option("--unique", help="Write each item once, drawing until N are written.")]
    = False,
    mark: Annotated[bool, typer.Option("--mark", help="Put new, train or held-out and a tab before each item.")]
    = False,
    max_draws: Annotated[int, typer.Option(help="Give up after drawing this many items (those dropped by "
                                           "--new-only or --unique, empty or unfinished ones included). 0: 100 "
                                           "per item asked for.")] = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
) -> None:
    """Write generated text to stdout (UTF-8), streamed as it is made.

    --items N writes N items, one per line (or per --item-separator),
    and on stderr how many were new and how many copied training or
    held-out items (from the run's item memory, items.safetensors).

    Prime characters outside the model's vocabulary are skipped, with a
    warning on stderr. With --num-samples, the first sample streams live;
    the others are buffered and follow in order. Only generated text counts
    for --stop: a stop string inside the prime does not end a sample.

    Exit status: 0 when done, also when stdout closes early (quietly,
    nothing on stderr: charrnn sample -n 0 | head -c 100); 1: bad
    checkpoint or prime file, or stdout unwritable; 2: bad options or a
    closed stdin/stdout; 130: Ctrl-C.
    """
    if prime_file is not None and prime:
        raise UsageError("give either --prime or --prime-file, not both")
    temps = temperatures(temp)
    item_separator = flag_text("--item-separator", item_separator, escapes=True)
    check_items(items, item_separator, new_only, unique, mark, max_draws, prime or prime_file, each_line, length,
                num_samples, stop)
    if each_line and prime_file is None and prime != "-":
        raise UsageError("--each-line continues each line of --prime-file PATH (or --prime - for stdin); give one")
    if each_line and num_samples > 1:
        raise UsageError("--each-line writes one continuation per line; leave out --num-samples")
    cfg = settings.SampleConfig(length=length, temperature=temps[0], top_k=top_k, top_p=top_p, num_samples=num_samples,
                                separator=flag_text("--separator", separator, escapes=True),
                                stop=flag_text("--stop", stop, escapes=True),
                                seed=seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    cfg.validate()
    target, prime = one_checkpoint(checkpoint, checkpoint_opt), flag_text("--prime", prime)
    threads_and_checks(threads, precision=precision)
    stdout_open()
    headers = headers or (len(temps) > 1 and sys.stdout.isatty())
    if items:
        from charrnn.generation.items import Wanted, sample_items

        wanted = Wanted(items, item_separator, new_only, unique, mark, max_draws)
        write_stream(sample_items(checkpoint=target, cfg=cfg, wanted=wanted, temperatures=temps, headers=headers,
                                  device_name=device, precision=precision))
        return
    from charrnn.generation.sample import sample_text

    write_stream(sample_text(checkpoint=target, cfg=cfg, device_name=device, precision=precision, prime=prime,
                             prime_file=prime_file, temperatures=temps, each_line=each_line, headers=headers))



@corpus_app.command("list")
@reports_errors
def corpus_list() -> None:
    """Show the corpora `charrnn corpus get` knows."""
    from charrnn.data.corpora import CATALOGUE

    write_stream([f"{name}\t{about}\n" for name, (about, _) in CATALOGUE.items()])


@corpus_app.command("get")
@reports_errors
def corpus_get(
    name: Annotated[str, typer.Argument(help="Corpus name (see charrnn corpus list).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write it: a file in an existing "
                                                "directory, a directory, or - for stdout.")] = None,
    url: Annotated[str | None, typer.Option(help="Download from here instead (a mirror); checksum still checked.")]
    = None,
) -> None:
    """Write a corpus to corpora/NAME.txt (or -o PATH; -o - for stdout)."""
    from charrnn.data.corpora import get

    if output != Path("-"):
        path, chars = get(name=name, out=output, url=url)
        info(f"wrote {path} ({chars:,} characters)")
        return
    stdout_open()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="charrnn-") as spool:  # a download is checked before any of it is out
        path, _ = get(name=name, out=Path(spool), url=url)
        with path.open(encoding="utf-8", newline="") as f:
            write_stream(iter(lambda: f.read(1 << 20), ""))


@app.command()
@reports_errors
def cache(
    out: Annotated[Path, typer.Option(help="Directory that holds runs; its corpus cache is OUT/.cache.")]
    = Path("checkpoints"),
    prune: Annotated[bool, typer.Option("--prune", help="Remove the entries no run under OUT uses.")] = False,
) -> None:
    """Show the corpus cache (OUT/.cache) and which runs use it.

    One line per prepared corpus, tab-separated: its entry, size in MB,
    age, the runs under OUT that use it (- for none) and its inputs, as
    absolute paths. The total goes to stderr.

    An entry is used by a run whose checkpoints were trained on the same
    text with the same --min-char-count and --encoding-errors. --prune
    removes the unused ones (only files in OUT/.cache, never one being
    written); a corpus trained on again is simply prepared anew.
    """
    from charrnn.training import caches

    if prune:
        caches.prune(out)
    else:
        write_stream(caches.listing(out))
