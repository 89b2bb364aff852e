"""Typer app: parse flags, build configs, call the library, map errors to exit codes. No tensor math here.

Exit codes: 0 ok; 1 runtime or data failure; 2 usage error; 130/143 interrupted after saving.
torch is imported inside the commands that need it, so --help and --version stay fast.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn import __version__
from charrnn.console import error, info
from charrnn.errors import CharrnnError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train character-level RNN/GRU/LSTM language models and sample text from them.")
corpus_app = typer.Typer(no_args_is_help=True, help="List and fetch ready-made corpora.")
app.add_typer(corpus_app, name="corpus")


def reports_errors(command):
    """Turn charrnn's errors into one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CharrnnError as e:
            error(str(e))
            raise typer.Exit(e.exit_code) from None

    return wrapper


def version_callback(value: bool) -> None:
    if value:
        print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                              help="Print the version and exit.")] = False) -> None:
    """charrnn: character-level language models for the shell."""


Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")]
Checkpoint = Annotated[Path | None, typer.Argument(
    help="Model file or run directory (best, else last). Default: the newest run under ./checkpoints.")]


@app.command()
@reports_errors
def train(
    inputs: Annotated[list[str], typer.Argument(
        help="UTF-8 text files, directories (searched recursively; hidden and binary files skipped) or - for stdin, "
        "joined in the order given.",
        show_default=False)],
    glob: Annotated[str | None, typer.Option(help="Only files matching this pattern in directories, e.g. '*.c'.")]
    = None,
    min_char_count: Annotated[int | None, typer.Option(
        help="Characters seen fewer times map to U+FFFD. [default: 0 = off]")] = None,
    cell: Annotated[str | None, typer.Option(help="lstm, gru or rnn. [default: lstm]")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Units per layer. [default: 256]")] = None,
    num_layers: Annotated[int | None, typer.Option(help="Recurrent layers. [default: 2]")] = None,
    embed_size: Annotated[int | None, typer.Option(help="Embedding width. [default: 64]")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout. [default: 0.1]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Parallel streams B. [default: 32]")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Characters per BPTT window T. [default: 128]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate. [default: 3e-3]")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps. [default: 100]")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Global grad-norm clip, 0 = off. [default: 1.0]")]
    = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget. [default: 2000 if no budget given]")]
    = None,
    epochs: Annotated[float | None, typer.Option(help="Budget in passes over the training text.")] = None,
    minutes: Annotated[float | None, typer.Option(help="Wall-clock budget in minutes.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between validations. [default: 250]")] = None,
    val_frac: Annotated[float | None, typer.Option(help="Held-out tail for validation. [default: 0.1]")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: 1337]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps. [default: auto]")] = None,
    run: Annotated[str | None, typer.Option(help="Run name. [default: file stem, stdin, or directory name]")] = None,
    out: Annotated[Path, typer.Option(help="Directory that holds runs.")] = Path("checkpoints"),
    config: Annotated[Path | None, typer.Option(help="TOML file of defaults; flags override it.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run of the same name.")] = False,
) -> None:
    """Train a model on INPUTS; checkpoints land in OUT/RUN/."""
    from charrnn import config as cfgmod
    from charrnn.sources import run_name

    flags = {k: v for k, v in locals().items()
             if k not in ("inputs", "glob", "run", "out", "config", "force", "cfgmod", "run_name")}
    settings = {**(cfgmod.from_toml(config) if config else {}), **{k: v for k, v in flags.items() if v is not None}}
    model_cfg, train_cfg = cfgmod.build(settings)
    name = run or run_name(inputs)
    if not run and len(inputs) > 1:
        info(f"run name {name!r}, from the first of {len(inputs)} inputs (--run NAME to choose another)")
    from charrnn.commands import train_run

    train_run(inputs, glob, out / name, model_cfg, train_cfg.budgeted(), force)


@app.command()
@reports_errors
def sample(
    checkpoint: Checkpoint = None,
    temp: Annotated[float, typer.Option("--temp", "-t", help="Softmax temperature; 0 = always the likeliest.")]
    = 1.0,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate after the prime.")] = 1000,
    prime: Annotated[str, typer.Option("--prime", "-p", help="Text to start from; printed first.")] = "",
    seed: Annotated[int | None, typer.Option(help="Same checkpoint + same seed = same text.")] = None,
    device: Device = "auto",
) -> None:
    """Write generated text to stdout, one character at a time."""
    if not math.isfinite(temp) or temp < 0:
        raise UsageError(f"--temp must be a finite number >= 0, not {temp}")
    if length < 0:
        raise UsageError(f"--length must be >= 0, not {length}")
    from charrnn.commands import sample_text

    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    write_stream(sample_text(checkpoint, prime, length, temp, seed, device))


def write_stream(chunks) -> None:
    """Text to stdout as UTF-8, flushed line by line; a closed pipe (| head) ends quietly with exit 0."""
    out = sys.stdout
    out.reconfigure(encoding="utf-8", errors="strict", write_through=False)
    try:
        for chunk in chunks:
            out.write(chunk)
            if "\n" in chunk:
                out.flush()
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at interpreter exit
        raise typer.Exit(0) from None


@app.command("info")
@reports_errors
def info_(checkpoint: Checkpoint = None) -> None:
    """Describe a checkpoint: model, vocabulary, training progress, best validation loss."""
    from charrnn.commands import describe

    print(describe(checkpoint))


@corpus_app.command("list")
def corpus_list() -> None:
    """Show the corpora `charrnn corpus get` knows."""
    from charrnn.corpora import CATALOGUE

    for name, (about, _) in CATALOGUE.items():
        print(f"{name}\t{about}")


@corpus_app.command("get")
@reports_errors
def corpus_get(
    name: Annotated[str, typer.Argument(help="Corpus name (see charrnn corpus list).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write it.")] = None,
    url: Annotated[str | None, typer.Option(help="Download from here instead (a mirror); checksum still checked.")]
    = None,
) -> None:
    """Write a corpus to corpora/NAME.txt (or -o PATH)."""
    from charrnn.corpora import get

    path, chars = get(name, output, url)
    info(f"wrote {path} ({chars:,} characters)")
