"""The command line (Typer): options and help, and one keyword-only call per command into the groups that do the
work. This module holds the app, its error handling, the options several commands share and the checks of
flags that are parsed by hand (--temp lists, the item flags); the commands are in making.py (train, sample,
corpus, cache), looking.py (score, info, cells, plot) and serving.py (serve).

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
from charrnn.console import error, printable
from charrnn.errors import CharrnnError, UsageError
from charrnn.streams import fill_closed_streams, write_stream


class OneLineErrors(typer.Typer):
    """The console entry point: flag and argument errors from the parser become one `error:` line, exit 2."""

    def __call__(self, *args, **kwargs):
        fill_closed_streams()
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except parse_errors() as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as click shows it
                e.show()
                sys.exit(e.exit_code)
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


HELP = {"help_option_names": ["-h", "--help"]}
app = OneLineErrors(no_args_is_help=True, pretty_exceptions_enable=False,
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
        except OSError as e:  # a path the user named that the system refuses (too long, a loop, no permission)
            error(f"{printable(str(e.filename)) + ': ' if e.filename else ''}{e.strerror or e}")
            raise typer.Exit(1) from None
        except MemoryError:
            error("out of memory; try smaller settings (--batch-size, --seq-len, --num-samples) or a shorter text")
            raise typer.Exit(1) from None
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


def opt(kind: type, help: str):
    """An optional flag whose absence means "not given" (so --config and --resume can tell)."""
    return Annotated[kind | None, typer.Option(help=help)]


def lowered(value: str | None) -> str | None:
    """A choice's name in any case (--cell LSTM): every name charrnn knows is lower case, so none is ambiguous."""
    return value.lower() if isinstance(value, str) else value


def choice(names: tuple[str, ...], help: str, kind: type = str | None):
    """A flag whose value is one of names, in any case; the shell completes them."""
    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return Annotated[kind, typer.Option(help=help, callback=lowered, autocompletion=complete)]


Device = choice(settings.DEVICES, "auto (cuda, then mps, then cpu), cpu, cuda or mps.", str)
Threads = opt(int, "CPU threads for torch. Default: OMP_NUM_THREADS, else the cores available to the process, "
                   "one while other processes load them.")
Precision = choice(settings.PRECISIONS, "auto (as training chose for the model; sampling on a CPU: fp32, with bf16 "
                   "weights where bf16 is native from 32 samples, or for a model of 4 MiB of recurrent weights), fp32 "
                   "or bf16.", str)
Checkpoint = Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help="Model file, run directory (best, else "
                                                   "last), folder of runs (its newest) or a run's name under "
                                                   "./checkpoints. Default: the newest run there.")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Model file, run directory (best, "
                                                   "else last), folder of runs (its newest) or a run's name under "
                                                   "./checkpoints. Default: the "
                                                   "newest run there.")]


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


def one_checkpoint(positional: Path | None, option: Path | None) -> Path | None:
    if positional is not None and option is not None:
        raise UsageError("name the checkpoint once: as an argument or with -c/--checkpoint, not both")
    return positional if positional is not None else option


def threads_and_checks(threads: int | None, **values) -> None:
    """Flags checked by config.RULES before any work, then torch's threads set."""
    settings.check(values, settings.flag)
    from charrnn.device import set_threads

    set_threads(threads)


def temperatures(text: str) -> list[float]:
    """--temp 0.8, or several: 0.5,0.8,1.2; each checked by config.RULES."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--temp must be a number, or numbers separated by commas (0.5,0.8,1.2), not "
                         f"{text!r}") from None
    for t in values:
        settings.check({"temperature": t}, settings.flag)
    return values


def check_items(items: int, separator: str | None, new_only: bool, unique: bool, mark: bool, max_draws: int,
                prime: object, each_line: bool, length: int, num_samples: int, stop: str | None) -> None:
    """The item flags: counts in range, and each only where it applies."""
    if not 0 <= items <= settings.MAX_ITEMS:
        raise UsageError(f"--items must be from 1 to {settings.MAX_ITEMS:,} (0: plain text), not {items}")
    if max_draws < 0:
        raise UsageError(f"--max-draws must be >= 0 (0: 100 per item), not {max_draws}")
    settings.check({"item_separator": separator}, settings.flag)  # an empty one: refused, as by train and score
    given = [f for f, on in (("--item-separator", separator is not None), ("--new-only", new_only),
                             ("--unique", unique), ("--mark", mark), ("--max-draws", max_draws)) if on]
    if given and not items:
        raise UsageError(f"{given[0]} applies to items; add --items N")
    if items and (prime or each_line):
        raise UsageError("--items begins every item after the separator; leave out --prime, --prime-file and "
                         "--each-line")
    if items and (num_samples > 1 or stop is not None):
        raise UsageError(f"--items N draws N items, each ended by the item separator; leave out "
                         f"{'--num-samples' if num_samples > 1 else '--stop'}")
    if items and length == 0:
        raise UsageError("--items needs a --length to cap each item (0 would let an item that never ends run "
                         "forever)")


# The commands register on app as their modules load, in the order --help lists them.
from charrnn.cli import making  # noqa: E402, F401

# isort: split
from charrnn.cli import looking  # noqa: E402, F401

# isort: split
from charrnn.cli import serving  # noqa: E402, F401
