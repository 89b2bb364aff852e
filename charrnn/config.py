"""Every default lives here, one comment each, and every rule a value must meet.

Precedence: defaults < --config TOML < flags. The same rules check flags, --config files and the configs stored
in checkpoints, each naming the value's source: `--lr`, `--config FILE: lr`, `FILE: model.num_layers`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import UsageError

CELLS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks in a layer's weights (model/rnn.py's CELLS reads them)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
ENCODING_ERRORS = ("strict", "replace", "skip")
MAX_WIDTH = 1 << 16  # largest --hidden-size / --embed-size: bounds what a file or a typo can ask to allocate
MAX_LAYERS = 64  # largest --num-layers
MAX_PARAMS = 1 << 31  # largest model, in parameters (8 GiB of fp32 weights, four times that while training)
MAX_VOCAB = 0x110000  # every Unicode code point
MAX_SEED = (1 << 64) - 1  # torch generators take 64-bit seeds
MAX_SAMPLES = 10_000  # largest --num-samples: one batch, its state held at once
MAX_ITEMS = 10_000_000  # largest `sample --items`: drawn in batches of MAX_SAMPLES
MAX_THREADS = 4096  # largest --threads
STATES = ("cell", "hidden")  # `cells --state`: an LSTM's cell state (as tanh(c)) or the hidden state
CHOICES = {"cell", "device", "precision", "encoding_errors", "state"}  # named choices: lower case, taken in any case


@dataclass
class ModelConfig:
    cell: str = "gru"  # recurrent cell: lstm | gru | rnn (gru learns fastest per CPU-minute: bench/quality.log)
    vocab_size: int = 0  # number of distinct characters; set from the corpus
    embed_size: int = 64  # character embedding width
    hidden_size: int = 256  # units per recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.0  # between recurrent layers and before the output layer (short runs underfit: none)

    def validate(self, label: Callable[[str], str] | None = None) -> None:
        check(dataclasses.asdict(self), label or flag, skip={"vocab_size"})


@dataclass
class TrainConfig:
    batch_size: int = 32  # B parallel streams over the training text
    seq_len: int = 64  # T characters per window; gradients flow back this far (truncated BPTT)
    lr: float = 6e-3  # peak AdamW learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (the regulariser short runs can afford: no dropout)
    warmup_steps: int = 20  # linear warmup from 0 to lr
    min_lr_frac: float = 0.1  # cosine decay ends at lr * min_lr_frac
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    max_steps: int | None = None  # step budget
    epochs: float | None = None  # budget in passes over the training split
    minutes: float | None = None  # wall-clock budget
    decay_steps: int | None = None  # cosine horizon in steps; default: the step budget (or the time budget)
    eval_every: int = 500  # steps between validations (and checkpoints)
    log_every: int = 25  # steps between metrics lines
    save_every: int | None = None  # extra last.safetensors saves every N steps (besides every evaluation)
    max_nonfinite: int = 5  # consecutive non-finite losses/gradients (steps skipped) before giving up
    val_frac: float = 0.1  # held-out tail of the corpus used for validation
    val_chars: int = 150_000  # ... but at most this many characters (the rest trains), so evaluation stays
    # cheap on large corpora; 0 = no cap
    item_separator: str | None = None  # items mode: the corpus is a list of items this separates (--items: "\n"),
    # shuffled with the seed and split by item (data/items.py); None = one running text
    min_char_count: int = 0  # characters seen fewer times than this map to U+FFFD; 0 = off
    encoding_errors: str = "strict"  # invalid UTF-8 in the corpus: strict (refuse) | replace (U+FFFD) | skip
    seed: int = 1337  # seeds torch so runs repeat
    device: str = "auto"  # auto: cuda, then mps, then cpu
    precision: str = "auto"  # auto: bf16 where the device has native bf16, else fp32; a run stores what it chose

    def validate(self, label: Callable[[str], str] | None = None) -> None:
        check(dataclasses.asdict(self), label or flag)

    def budgeted(self) -> TrainConfig:
        """With no budget given, train for DEFAULT_STEPS."""
        if self.max_steps is None and self.epochs is None and self.minutes is None:
            return dataclasses.replace(self, max_steps=DEFAULT_STEPS)
        return self


DEFAULT_STEPS = 2000  # budget when none of --max-steps/--epochs/--minutes is given
FINETUNE = {  # TrainConfig's defaults that differ when --init-from starts from a trained model (bench/finetune.log)
    "lr": 1e-3,  # a sixth of a new run's: with dropout 0.2, the lowest held-out loss on a small text (1.477 against
    # 1.486 at 2e-3 and 1.508 at 2e-3 without dropout), overfitting it least; --warmup-steps stays 20
    "batch_size": 8,  # a quarter of a new run's: four times the updates per pass over a small text, each from a
    # quarter of the characters; best held-out 1.433 against 1.494 at 32 and 1.454 at 16 over the same 1.4 million
    # characters (4: 1.432 over half as many)
    "weight_decay": 0.3,  # three times a new run's: with batch 8, 1.414 against 1.433 at 0.1 (0.5: 1.410; 0.7:
    # 1.435; 1.0: 1.489); decay towards the source's weights instead of zero did worse (1.518 against 1.494)
}
FINETUNE_DROPOUT = 0.2  # --dropout with --init-from: the source's, at least this (a small text overfits)


def between(low: float, high: float) -> Callable[[float], bool]:
    return lambda v: low <= v <= high  # NaN fails every comparison


def one_of(names: tuple[str, ...]) -> tuple[Callable[[str], bool], str]:
    return (lambda v: v in names), f"must be one of {', '.join(names)}"


POSITIVE = (between(1, math.inf), "must be at least 1")
FINITE_POSITIVE = (lambda v: 0 < v < math.inf, "must be a positive number")
NOT_NEGATIVE = (between(0, math.inf), "must be >= 0")
RULES: dict[str, tuple[Callable, str]] = {  # name: (test of a value, what the test asks)
    "cell": one_of(CELLS),
    "vocab_size": (between(1, MAX_VOCAB), f"must be from 1 to {MAX_VOCAB:,}"),
    "embed_size": (between(1, MAX_WIDTH), f"must be from 1 to {MAX_WIDTH:,}"),
    "hidden_size": (between(1, MAX_WIDTH), f"must be from 1 to {MAX_WIDTH:,}"),
    "num_layers": (between(1, MAX_LAYERS), f"must be from 1 to {MAX_LAYERS}"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "batch_size": POSITIVE,
    "seq_len": POSITIVE,
    "lr": (lambda v: 0 < v <= 10, "must be a number in (0, 10]"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    "warmup_steps": NOT_NEGATIVE,
    "min_lr_frac": (between(0, 1), "must be in [0, 1]"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "must be a finite number >= 0 (0 = off)"),
    "max_steps": POSITIVE,
    "epochs": FINITE_POSITIVE,
    "minutes": FINITE_POSITIVE,
    "decay_steps": POSITIVE,
    "eval_every": POSITIVE,
    "log_every": POSITIVE,
    "save_every": POSITIVE,
    "max_nonfinite": POSITIVE,
    "val_frac": (lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    "val_chars": (between(0, math.inf), "must be >= 0 (0 = no cap)"),
    "item_separator": (lambda v: v != "", "needs at least one character (\\n: one item per line)"),
    "min_char_count": NOT_NEGATIVE,
    "encoding_errors": one_of(ENCODING_ERRORS),
    "seed": (between(0, MAX_SEED), f"must be an integer from 0 to 2**64 - 1 ({MAX_SEED})"),
    "device": one_of(DEVICES),
    "precision": one_of(PRECISIONS),
    "threads": (between(1, MAX_THREADS), f"must be from 1 to {MAX_THREADS}"),
    # sample
    "length": (between(0, math.inf), "must be >= 0 (0 = endless)"),
    "temperature": (lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    "top_k": (between(0, math.inf), "must be >= 0 (0 = off)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1] (1 = off)"),
    "num_samples": (between(1, MAX_SAMPLES), f"must be from 1 to {MAX_SAMPLES:,}"),
    "stop": (lambda v: v != "", "needs at least one character (leave it out to stop at --length only)"),
    # cells
    "state": one_of(STATES),
    "top": POSITIVE,
    "max_chars": (between(0, math.inf), "must be >= 0 (0: the --find table alone)"),
}
FLAG_NAMES = {"temperature": "--temp"}  # settings whose flag is not their name with dashes


def flag(key: str) -> str:
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def check(values: dict, label: Callable[[str], str], skip: set[str] = frozenset(),
          error: type[Exception] = UsageError) -> None:
    """Raise error naming the first value that breaks its rule (None means "not set" and passes). An integer
    also fits in 64 bits, whatever its rule: a larger one overflows where it meets a float."""
    for key, value in values.items():
        if key in skip:
            continue
        test, rule = RULES[key]
        if value is not None and not (test(value) and fits(value)):
            raise error(f"{label(key)} {rule}, not {shown(value)}")


def fits(value) -> bool:
    """Whether a number is one charrnn can compute with: an integer of at most 64 bits (a bool is fine)."""
    return not isinstance(value, int) or value.bit_length() <= 64


def shown(value) -> str:
    """A value for an error message: as Python writes it, but a huge integer by its size (its digits could be
    thousands, more than str() even writes)."""
    huge = isinstance(value, int) and value.bit_length() > 256  # over 77 digits
    return f"an integer of {value.bit_length():,} bits" if huge else repr(value)


def typed(data: dict, keys: set[str], label: Callable[[str], str], error: type[Exception] = UsageError) -> dict:
    """data (from a TOML file or a checkpoint) with its keys and value types checked against the configs."""
    unknown = sorted(k for k in data if k not in keys)
    if unknown:
        raise error(f"{label(unknown[0])} is not a setting charrnn knows")
    for key, value in data.items():
        accepted, noun = TYPES[FIELD_TYPES[key]]
        optional = "None" in FIELD_TYPE_TEXT[key] and value is None
        if not optional and (isinstance(value, bool) or not isinstance(value, accepted)):
            raise error(f"{label(key)} must be {noun}, not {value!r}")
    return data


def from_toml(path: Path) -> dict:
    """Read a --config file: top-level keys or [model]/[train] tables, names as in the dataclasses."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read --config {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path} is not valid TOML: {e}") from None
    tables = [data.pop(name, {}) for name in ("model", "train")]
    if not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"--config {path}: [model] and [train] must be tables")
    flat = {k.replace("-", "_"): v for k, v in {**tables[0], **tables[1], **data}.items()}

    def label(key: str) -> str:
        return f"--config {path}: {key}"

    once = sorted(PER_INVOCATION & flat.keys())
    if once:
        raise UsageError(f"{label(once[0])} cannot be set in a file: --{once[0]} is given on the command line, "
                         "for one invocation")
    typed(flat, (MODEL_KEYS | TRAIN_KEYS | INVOCATION.keys()) - {"vocab_size"}, label)
    flat = {k: v.lower() if k in CHOICES else v for k, v in flat.items()}  # cell = "LSTM", as on the command line
    check(flat, label, skip={"run", "out", "glob"})  # run: rundir.check_name; out, glob: any text
    return flat


MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
INVOCATION = {"threads": "int | None", "run": "str | None", "out": "str | None", "glob": "str | None"}  # flags
# of `train` that are no setting of the run, taken from --config files too
PER_INVOCATION = {"resume", "force", "config"}  # flags about this one command: refused in a --config file
TYPES = {"int": (int, "an integer"), "float": ((int, float), "a number"), "str": (str, "a string")}
FIELD_TYPE_TEXT = {f.name: f.type for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)} | INVOCATION
FIELD_TYPES = {name: text.split(" |")[0] for name, text in FIELD_TYPE_TEXT.items()}
BUDGETS = {"max_steps", "epochs", "minutes"}
RESUMABLE = {"max_steps", "epochs", "minutes", "decay_steps", "eval_every", "log_every", "save_every",
             "max_nonfinite", "device", "precision"}  # may change on --resume: the budgets and intervals without
# breaking exact continuation; the device and precision too, but a resume is bit-identical only on the same ones
# (training/session.choose_precision says so). --threads is not stored at all: see the README on bit-identity.


def build(given: dict) -> tuple[ModelConfig, TrainConfig]:
    """Split a flat {name: value} dict of given settings into validated configs (with a budget)."""
    model = ModelConfig(**{k: v for k, v in given.items() if k in MODEL_KEYS})
    train = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_KEYS})
    model.validate()
    train.validate()
    return model, train.budgeted()


def for_resume(model: dict, train: dict, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """A run's stored configs with the given settings applied; settings that would change the run are refused."""
    train = {"val_chars": 0, **train}  # a run from before --val-chars held out the whole --val-frac
    differs = [f"--{k.replace('_', '-')} {v} (the run has {(model | train).get(k)})" for k, v in given.items()
               if k not in RESUMABLE and (model | train).get(k) != v]
    if differs:
        raise UsageError(f"cannot resume with different settings: {'; '.join(differs)}; "
                         "drop them, or start a new run with --run NAME")
    if BUDGETS & given.keys():  # a new budget replaces the run's budgets instead of adding to them
        train = {**train, **dict.fromkeys(BUDGETS)}
    return build({**model, **train, **{k: v for k, v in given.items() if k in RESUMABLE}})


@dataclass
class SampleConfig:
    length: int = 1000  # characters to generate after the prime, per sample; 0 = endless
    temperature: float = 1.0  # softmax temperature; 0 = argmax
    top_k: int = 0  # keep only the k likeliest characters; 0 = all
    top_p: float = 1.0  # nucleus: keep the likeliest characters whose probabilities sum to p; 1 = all
    prime: str = ""  # text the state is warmed up on, printed first
    seed: int | None = None  # same checkpoint + same seed -> same text
    num_samples: int = 1  # N samples generated together as one batch
    separator: str = "\n\n"  # written between samples: a blank line
    stop: str | None = None  # a sample ends once it has emitted this string (included); None = only --length

    def validate(self) -> None:
        check(dataclasses.asdict(self), flag, skip={"prime", "separator"})  # any text
        if self.length == 0 and self.num_samples > 1 and not self.stop:
            raise UsageError("--length 0 (endless) with --num-samples > 1 needs --stop: "
                             "otherwise only the first sample would ever be written")
