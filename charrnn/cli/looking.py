"""The commands that look into a model: `score`, `info`, `cells` and `plot`."""

from __future__ import annotations

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
    choice,
    flag_text,
    one_checkpoint,
    reports_errors,
    threads_and_checks,
)
from charrnn.errors import UsageError
from charrnn.streams import stdin_is_terminal, stdout_open, write_stream

EncodingErrors = choice(settings.ENCODING_ERRORS, "Invalid UTF-8: strict (refuse), replace (U+FFFD) or skip.", str)


@app.command()
@reports_errors
def score(
    files: Annotated[list[str] | None, typer.Argument(metavar="FILE", help="UTF-8 texts to score, each on its "
                     "own, or - for stdin (once). Default: stdin.", show_default=False)] = None,
    checkpoint: CheckpointOpt = None,
    per_line: Annotated[bool, typer.Option("--per-line", help="Score each line on its own, as it arrives: "
                                           "bits_per_char<TAB>line, ready for sort -n.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Write the report as JSON (JSON Lines with --per-line, "
                                        "--items or several FILEs).")] = False,
    items: Annotated[bool, typer.Option("--items", help="Score each item of a list alone (one per line, or per "
                                        "--item-separator), its end included: bits_per_char<TAB>item, likeliest "
                                        "first.")] = False,
    item_separator: Annotated[str | None, typer.Option(help="What ends each item (\\n \\t \\r \\\\ "
                                                       "understood). Default: the run's, else a line end.")] = None,
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

    Several FILEs: a header, one row per file (bits_per_char, nats_per_char,
    perplexity, chars, scored, oov, file) and a last row, total, over all
    their scored characters; with --json one line per file ("file": its
    path) and the total's with "file": null. --per-line takes one FILE.

    Exit status: 0 ok, also when stdout closes early; 1: unreadable text
    or checkpoint, or stdout unwritable; 2: bad options or a closed
    stdin/stdout; 130: Ctrl-C.
    """
    threads_and_checks(threads, encoding_errors=encoding_errors, precision=precision)
    files = files or ["-"]
    if files.count("-") > 1:
        raise UsageError("- (stdin) can be read only once; give it once among the FILEs")
    item_separator = flag_text("--item-separator", item_separator, escapes=True)
    if item_separator is not None and not items:
        raise UsageError("--item-separator applies to --items; add it")
    settings.check({"item_separator": item_separator}, settings.flag)
    if per_line and items:
        raise UsageError("give --per-line or --items, not both")
    for mode, on in (("--per-line", per_line), ("--items", items)):
        if on and len(files) > 1:
            raise UsageError(f"{mode} scores one FILE, not {len(files)}; join them first (cat a.txt b.txt | "
                             f"charrnn score {mode})")
    if "-" in files and stdin_is_terminal():
        raise UsageError("give a FILE to score, or pipe text in (e.g. cat notes.txt | charrnn score)")
    stdout_open()
    from charrnn.analysis.score import score as score_text

    write_stream(score_text(sources=files, checkpoint=checkpoint, device_name=device, precision=precision,
                            as_json=json_, errors=encoding_errors, per_line=per_line,
                            items_by=(item_separator or "") if items else None))


@app.command()
@reports_errors
def plot(
    runs: Annotated[list[Path] | None, typer.Argument(metavar="RUNS", help="Run directories (or a checkpoint in "
                    "one, a folder of runs: its newest, or a run's name under ./checkpoints). Default: the newest "
                    "run there.",
                    show_default=False)] = None,
    checkpoint: CheckpointOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Figure file: .png, .svg or .pdf. "
                      "Default: loss.png in the first run's directory.")] = None,
) -> None:
    """Plot training and validation loss (bits/char) against steps and minutes.

    Several runs share one figure. The figure needs matplotlib (pip install
    'charrnn[plot]'); without it a text curve goes to stderr instead.

    Exit status: 0 ok, also without matplotlib (a text curve on stderr);
    1: a run unreadable, or matplotlib missing with -o; 2: bad options.
    """
    from charrnn.analysis.plot import plot as plot_runs

    plot_runs(runs=[*(runs or []), *([checkpoint] if checkpoint else [])], output=output)


@app.command("info")
@reports_errors
def info_(checkpoint: Checkpoint = None, checkpoint_opt: CheckpointOpt = None,
          vocab: Annotated[bool, typer.Option("--vocab", help="List the whole vocabulary instead: index<TAB>character, "
                                              "one a line; control characters, whitespace other than the space, "
                                              "and the backslash escaped (\\n, \\t, \\x85, \\\\).")] = False,
          threads: Threads = None) -> None:
    """Describe a checkpoint: model, vocabulary, training progress, best validation loss."""
    target = one_checkpoint(checkpoint, checkpoint_opt)
    threads_and_checks(threads)
    stdout_open()
    from charrnn.analysis.info import describe, vocabulary

    write_stream([vocabulary(target) if vocab else describe(target)])


@app.command()
@reports_errors
def cells(
    file: Annotated[str, typer.Argument(metavar="FILE", help="UTF-8 text to read, or - for stdin.")],
    checkpoint: CheckpointOpt = None,
    unit: Annotated[list[str] | None, typer.Option("--unit", "-u", metavar="LAYER:INDEX", help="A unit to show: "
                                                   "layer and index, both counted from 0 (0:17 is the first "
                                                   "layer's unit 17). Repeatable.")] = None,
    state: choice(settings.STATES, "cell (an LSTM's cell state, as tanh(c)) or hidden. Default: cell for an LSTM, "
                  "hidden for a GRU or RNN; --find scores both states of an LSTM unless --state is given.") = None,
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
    checkpoint or page; 2: bad options, or a --find signal that never
    changes on the text.
    """
    threads_and_checks(threads, state=state, top=top, max_chars=max_chars, device=device)
    if file == "-" and stdin_is_terminal():
        raise UsageError("give a FILE to read, or pipe text in (e.g. cat notes.py | charrnn cells - --find quote)")
    from rich.console import Console

    from charrnn.analysis.unitview import cells as show_cells

    colour = sys.stdout is not None and Console(file=sys.stdout).is_terminal
    out = show_cells(source=file, checkpoint=checkpoint, unit=unit or [], state=state, find=find, top=top,
                     max_chars=max_chars, page=html, values=values, colour=colour, device_name=device)
    if out is not None:
        write_stream(out)
