"""Typer app: parse flags, build configs, call the library, map errors to exit codes. No tensor math here.

Exit codes: 0 ok; 1 runtime or data failure; 2 usage error; 130/143 interrupted after saving.
torch is imported inside the commands that need it, so --help and --version stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn import __version__
from charrnn import config as settings
from charrnn.console import error, info
from charrnn.errors import CharrnnError, UsageError


class OneLineErrors(typer.Typer):
    """The console entry point: flag and argument errors from the parser become one `error:` line, exit 2."""

    def __call__(self, *args, **kwargs):
        fill_closed_streams()
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except parse_errors() as e:
            where = e.ctx.command_path if getattr(e, "ctx", None) else "charrnn"
            if e.format_message():  # empty when the help was shown for a bare command
                error(f"{e.format_message().rstrip('.')}; see {where} --help")
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        except CharrnnError as e:  # from an eager option (--version), outside any command
            error(str(e))
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def parse_errors() -> tuple[type[Exception], ...]:
    """The parser's error types: Typer's own, and click's where Typer still runs on click."""
    try:
        from click import ClickException
    except ImportError:
        return (typer.exceptions.TyperException,)
    return (typer.exceptions.TyperException, ClickException)


def fill_closed_streams() -> None:
    """A standard stream closed by the shell (<&-, >&-, 2>&-) gets /dev/null in its place, so no file charrnn
    opens can take its number. sys.stdin/stdout stay None, so a command that needs one says it is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: fd itself, or a lower closed one
            if null != fd:
                os.dup2(null, fd)


HELP = {"help_option_names": ["-h", "--help"]}
app = OneLineErrors(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                    rich_markup_mode=None, context_settings=HELP,
                    help="Train character-level RNN/GRU/LSTM language models and sample text from them.")
corpus_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP,
                         help="List and fetch ready-made corpora.")
app.add_typer(corpus_app, name="corpus")


def reports_errors(command):
    """Turn charrnn's errors into one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CharrnnError as e:
            if str(e):
                error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C: quietly, exit 130 (train handles its own signals)
            with contextlib.suppress(OSError, ValueError, AttributeError):  # AttributeError: stdout closed
                sys.stdout.flush()
            raise typer.Exit(130) from None

    return wrapper


def version_callback(value: bool) -> None:
    if value:
        write_stream([f"charrnn {__version__}\n"])
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                              help="Print the version and exit.")] = False) -> None:
    """charrnn: character-level language models for the shell."""


M, T, S = settings.ModelConfig(), settings.TrainConfig(), settings.SampleConfig()  # defaults for --help


def opt(kind: type, help: str):
    """An optional flag whose absence means "not given" (so --config and --resume can tell)."""
    return Annotated[kind | None, typer.Option(help=help)]


Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")]
Threads = Annotated[int | None, typer.Option(help="CPU threads for torch. Default: the cores available to the "
                                                  "process.")]
Precision = Annotated[str, typer.Option(help="auto (bf16 where the device has native bf16, else fp32), fp32 or "
                                             "bf16.")]
Checkpoint = Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help="Model file, run directory (best, else "
                                                   "last) or folder of runs (its newest). Default: the newest run "
                                                   "under ./checkpoints.")]


@app.command()
@reports_errors
def train(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUTS", help="UTF-8 text files, directories (searched recursively; hidden, binary and UTF-16 files "
        "skipped) or - for stdin, joined in the order given.", show_default=False)],
    glob: opt(str, "Only files matching this pattern in directories, e.g. '*.c'.") = None,
    min_char_count: opt(int, "Characters seen fewer times map to U+FFFD. Default: 0 (off).") = None,
    encoding_errors: opt(str, "Invalid UTF-8 in the corpus: strict (refuse it), replace (each bad byte becomes "
                         "U+FFFD) or skip (drop it). Default: strict.") = None,
    cell: opt(str, f"lstm, gru or rnn. Default: {M.cell}.") = None,
    hidden_size: opt(int, f"Units per layer. Default: {M.hidden_size}.") = None,
    num_layers: opt(int, f"Recurrent layers. Default: {M.num_layers}.") = None,
    embed_size: opt(int, f"Embedding width. Default: {M.embed_size}.") = None,
    dropout: opt(float, f"Dropout. Default: {M.dropout}.") = None,
    batch_size: opt(int, f"Parallel streams B. Default: {T.batch_size}.") = None,
    seq_len: opt(int, f"Characters per BPTT window T. Default: {T.seq_len}.") = None,
    lr: opt(float, f"Peak AdamW learning rate. Default: {T.lr}.") = None,
    weight_decay: opt(float, f"AdamW weight decay. Default: {T.weight_decay}.") = None,
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
    seed: opt(int, f"Random seed. Default: {T.seed}.") = None,
    device: opt(str, "auto (cuda, then mps, then cpu), cpu, cuda or mps. Default: auto.") = None,
    precision: opt(str, "auto (bf16 autocast where the device has native bf16, else fp32), fp32 or bf16; "
                   "weights and optimizer state stay fp32. Default: auto.") = None,
    threads: Threads = None,
    run: opt(str, "Run name. Default: the file's stem, stdin for -, or the directory's name.") = None,
    out: Annotated[Path, typer.Option(help="Directory that holds runs.")] = Path("checkpoints"),
    config: Annotated[Path | None, typer.Option(help="TOML file of defaults; flags override it.")] = None,
    decay_steps: opt(int, "Cosine decay horizon in steps. Default: the step budget.") = None,
    save_every: opt(int, "Also save last.safetensors every N steps.") = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT/RUN exactly where it stopped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run; with --resume, accept a "
                                        "changed corpus.")] = False,
) -> None:
    """Train a model on INPUTS; checkpoints land in OUT/RUN/."""
    from charrnn.device import set_threads

    set_threads(threads)
    flags = {k: v for k, v in locals().items() if k in settings.MODEL_KEYS | settings.TRAIN_KEYS and v is not None}
    settings.check(flags, settings.flag)
    given = {**(settings.from_toml(config) if config else {}), **flags}
    from charrnn.sources import run_name

    name = run if run is not None else run_name(inputs)
    if run is None and len(inputs) > 1:
        info(f"run name {name!r}, from the first of {len(inputs)} inputs (--run NAME to choose another)")
    from charrnn.commands import train_run

    train_run(inputs, glob, out, name, given, force, resume)


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def flag_text(name: str, value: str | None, escapes: bool = False) -> str | None:
    """A text flag as UTF-8 whatever the locale (argv arrives surrogate-escaped); optionally with
    the backslash escapes \\n \\t \\r \\\\ turned into the characters they name."""
    if value is None:
        return None
    raw = os.fsencode(value)
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        also = " (or read it from a UTF-8 file with --prime-file)" if name == "--prime" else ""
        raise UsageError(f"{name} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); give UTF-8 "
                         f"text{also}") from None
    return re.sub(r"\\([ntr\\])", lambda m: ESCAPES[m.group(1)], value) if escapes else value


CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Model file or run directory (best, "
                                                   "else last). Default: the newest run under ./checkpoints.")]
EncodingErrors = Annotated[str, typer.Option(help="Invalid UTF-8: strict (refuse), replace (U+FFFD) or skip.")]


def one_checkpoint(positional: Path | None, option: Path | None) -> Path | None:
    if positional is not None and option is not None:
        raise UsageError("name the checkpoint once: as an argument or with -c/--checkpoint, not both")
    return positional if positional is not None else option


@app.command()
@reports_errors
def sample(
    checkpoint: Checkpoint = None,
    checkpoint_opt: CheckpointOpt = None,
    temp: Annotated[float, typer.Option("--temp", "-t", help="Softmax temperature; 0 = always the likeliest.")]
    = S.temperature,
    top_k: Annotated[int, typer.Option("--top-k", help="Draw only from the K likeliest characters; 0 = off.")]
    = S.top_k,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus: draw only from the likeliest characters "
                                         "whose probabilities sum to P, in (0, 1]; 1 = off.")] = S.top_p,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate after the prime, per "
                                        "sample; 0 = endless (until stdout closes or Ctrl-C).")] = S.length,
    prime: Annotated[str, typer.Option("--prime", "-p", help="Text to start from, printed first; - reads it "
                                       "from stdin.")] = "",
    prime_file: Annotated[Path | None, typer.Option("--prime-file", help="Read the prime from this UTF-8 file.")]
    = None,
    num_samples: Annotated[int, typer.Option("--num-samples", help="Samples drawn together as one batch, "
                                             "written one after another.")] = S.num_samples,
    separator: Annotated[str, typer.Option(help="Written between samples (\\n \\t \\r \\\\ understood).")]
    = S.separator.encode("unicode_escape").decode(),
    stop: Annotated[str | None, typer.Option(help="A sample ends once it generates this string, which is written "
                                             "(\\n \\t \\r \\\\ understood); else at --length.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same checkpoint + same seed + same options = same text.")]
    = None,
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
) -> None:
    """Write generated text to stdout (UTF-8), streamed as it is made.

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
    target = one_checkpoint(checkpoint, checkpoint_opt)
    cfg = settings.SampleConfig(length=length, temperature=temp, top_k=top_k, top_p=top_p, num_samples=num_samples,
                                separator=flag_text("--separator", separator, escapes=True),
                                stop=flag_text("--stop", stop, escapes=True),
                                seed=seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    cfg.validate()
    prime = flag_text("--prime", prime)
    settings.check({"precision": precision}, settings.flag)
    stdout_open()
    from charrnn.commands import read_prime, sample_text
    from charrnn.device import set_threads

    set_threads(threads)
    cfg.prime = read_prime(prime, prime_file)
    write_stream(sample_text(target, cfg, device, precision))


def stdout_open() -> None:
    """Commands that write data refuse a stdout the shell closed (>&-) before doing any work."""
    if sys.stdout is None:
        raise UsageError("stdout is closed; send the output to a file or a pipe (e.g. > out.txt)")


def write_stream(chunks) -> None:
    """Text to stdout as UTF-8, each chunk as soon as it is made (a flush costs far less than a model step).
    A closed pipe (| head) ends quietly with exit 0; any other write error (a full disk) is a one-line error."""
    stdout_open()
    out = sys.stdout
    out.reconfigure(encoding="utf-8", errors="strict")
    try:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # drop what is buffered: no error at exit
        if isinstance(e, BrokenPipeError):
            raise typer.Exit(0) from None
        raise CharrnnError(f"cannot write to stdout: {e.strerror}; free some space or send the output "
                           "elsewhere") from None


@app.command()
@reports_errors
def score(
    file: Annotated[str, typer.Argument(metavar="FILE", help="UTF-8 text to score, or - for stdin.")] = "-",
    checkpoint: CheckpointOpt = None,
    per_line: Annotated[bool, typer.Option("--per-line", help="Score each line on its own, as it arrives: "
                                           "bits_per_char<TAB>line, ready for sort -n.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Write the report as JSON (JSON Lines with --per-line).")]
    = False,
    encoding_errors: EncodingErrors = "strict",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
) -> None:
    """Score a text under a model: bits/char, nats/char, perplexity.

    The text is scored in the layout of training's validation (the
    checkpoint's batch size and sequence length, state carried), so a run's
    validation split scores its validation loss. Every character is
    scored except the first (context only) and those outside the
    vocabulary (skipped, counted as oov and named on stderr). --per-line
    scores each line alone, its newline included, as if after a newline.

    Exit status: 0 ok, also when stdout closes early; 1: unreadable text
    or checkpoint, or stdout unwritable; 2: bad options or a closed
    stdin/stdout; 130: Ctrl-C.
    """
    settings.check({"encoding_errors": encoding_errors, "precision": precision}, settings.flag)
    if file == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("give a FILE to score, or pipe text in (e.g. cat notes.txt | charrnn score)")
    stdout_open()
    from charrnn.commands import score_each_line, score_report
    from charrnn.device import set_threads

    set_threads(threads)
    how = (file, checkpoint, device, precision, json_, encoding_errors)
    write_stream(score_each_line(*how) if per_line else [score_report(*how) + "\n"])


@app.command()
@reports_errors
def plot(
    runs: Annotated[list[Path] | None, typer.Argument(metavar="RUNS", help="Run directories (or a checkpoint in "
                    "one, or a folder of runs: its newest). Default: the newest run under ./checkpoints.",
                    show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Figure file: .png, .svg or .pdf. "
                      "Default: loss.png in the first run's directory.")] = None,
) -> None:
    """Plot training and validation loss (bits/char) against steps and minutes.

    Several runs share one figure. The figure needs matplotlib (pip install
    'charrnn[plot]'); without it a text curve goes to stderr instead.

    Exit status: 0 ok; 1: a run unreadable, or matplotlib missing (the text
    curve is still shown); 2: bad options.
    """
    from charrnn import plot as plots

    if output is not None:
        plots.check_output(output)
    dirs = [plots.find_run(r) for r in runs or [None]]
    curves = [plots.read(d) for d in dirs]
    output = output if output is not None else dirs[0] / "loss.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        info(plots.text(curves))
        raise CharrnnError("matplotlib is not installed, so no figure was written (the text curve is above); "
                           "install it with: pip install 'charrnn[plot]'") from None
    from charrnn.atomic import writing

    with writing(output) as tmp:
        plots.figure(curves, tmp, output.suffix[1:].lower())
    info(f"wrote {output}")


@app.command("info")
@reports_errors
def info_(checkpoint: Checkpoint = None, threads: Threads = None) -> None:
    """Describe a checkpoint: model, vocabulary, training progress, best validation loss."""
    stdout_open()
    from charrnn.commands import describe
    from charrnn.device import set_threads

    set_threads(threads)
    write_stream([describe(checkpoint) + "\n"])


@app.command()
@reports_errors
def cells(
    file: Annotated[str, typer.Argument(metavar="FILE", help="UTF-8 text to read, or - for stdin.")],
    checkpoint: CheckpointOpt = None,
    unit: Annotated[list[str] | None, typer.Option("--unit", "-u", metavar="LAYER:INDEX", help="A unit to show: "
                                                   "layer and index, both counted from 0 (0:17 is the first "
                                                   "layer's unit 17). Repeatable.")] = None,
    state: Annotated[str | None, typer.Option(help="cell (an LSTM's cell state, as tanh(c)) or hidden. Default: "
                                              "cell for an LSTM, hidden for a GRU or RNN; --find scores both "
                                              "states of an LSTM unless --state is given.")] = None,
    values: Annotated[bool, typer.Option("--values", help="Write char<TAB>value lines even at a terminal (one "
                                         "value column per --unit).")] = False,
    html: Annotated[Path | None, typer.Option("--html", metavar="PAGE.html", help="Write a standalone HTML page "
                                              "(one block per unit; hover a character for its value and the five "
                                              "likeliest next characters) instead of the text on stdout.")] = None,
    find: Annotated[str | None, typer.Option(metavar="PREDICATE", help="Rank every unit by the rank (Spearman) "
                                             "correlation of its values with a signal over the whole text and show "
                                             "the best (or the --unit units): quote, comment, line-position, "
                                             "indent, brackets or regex:PATTERN.")] = None,
    top: Annotated[int, typer.Option(help="Units in the --find table.")] = 10,
    max_chars: Annotated[int | None, typer.Option(help="Show only the first N characters (0: none, for the "
                                                  "--find table alone); --find still reads the whole text. "
                                                  "Default: all.")] = None,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Show what single units of a model do: FILE with each character
    coloured by a unit's value once the model has read it, from blue (-1)
    through white (0) to red (+1).

    At a terminal (or with FORCE_COLOR set) the text is written with 24-bit
    background colours; otherwise, or with --values, one line per
    character: the character (a newline, tab or backslash as \\n, \\t,
    \\\\; other control characters escaped likewise), a tab and the value.
    Characters outside the model's vocabulary are left out, with a warning.

    --find's table (unit, state, rank correlation, Pearson's r; best
    first, in columns) goes to stdout when the text does not (with --html,
    or --max-chars 0), else to stderr. Signals, each the value once a
    character is read: quote: 1 inside a '...' or "..." span closed on its
    line, from the opening quote to before the closing one; comment: 1
    inside #, // and /* */ comments (quoted spans skipped); line-position:
    characters since the last newline; indent: leading spaces and tabs of
    the line, read so far; brackets: depth of ( [ {; regex:PATTERN: 1 inside
    a match (Python re).

    Exit status: 0 ok, also when stdout closes early; 1: unreadable text,
    checkpoint or page; 2: bad options.
    """
    from charrnn.signals import parse

    pairs = [parse_unit(spec) for spec in unit or []]
    if find is not None:
        parse(find)
    elif not pairs:
        raise UsageError("name a unit with --unit LAYER:INDEX (e.g. --unit 0:0), or let --find PREDICATE pick one")
    if state not in (None, "cell", "hidden"):
        raise UsageError(f"--state {state!r}: expected cell or hidden")
    if top < 1 or (max_chars is not None and max_chars < 0):
        raise UsageError(f"--top must be at least 1 and --max-chars at least 0 (got {top} and {max_chars})")
    if html is not None and not html.parent.is_dir():
        raise UsageError(f"--html {html}: no directory {html.parent}")
    if file == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("give a FILE to read, or pipe text in (e.g. cat notes.py | charrnn cells - --find quote)")
    from rich.console import Console

    from charrnn.commands import cells_report
    from charrnn.device import set_threads

    set_threads(threads)
    colour = sys.stdout is not None and Console(file=sys.stdout).is_terminal
    chunks = cells_report(file, checkpoint, pairs, state, find, top, max_chars, html, values, colour, device)
    if html is None or values or find is not None:
        write_stream(chunks)
    else:  # the page alone: stdout is not needed
        for _ in chunks:
            pass


def parse_unit(spec: str) -> tuple[int, int]:
    """--unit LAYER:INDEX -> (layer, index); the ranges are checked once the model is loaded."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not m:
        raise UsageError(f"--unit {spec!r}: expected LAYER:INDEX, two numbers counted from 0, e.g. --unit 0:17")
    return int(m[1]), int(m[2])


@corpus_app.command("list")
@reports_errors
def corpus_list() -> None:
    """Show the corpora `charrnn corpus get` knows."""
    from charrnn.corpora import CATALOGUE

    write_stream([f"{name}\t{about}\n" for name, (about, _) in CATALOGUE.items()])


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
