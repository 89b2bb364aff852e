"""Every default lives here, one comment each. Precedence: defaults < --config TOML < flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import UsageError

CELLS = ("lstm", "gru", "rnn")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class ModelConfig:
    cell: str = "lstm"  # recurrent cell: lstm | gru | rnn
    vocab_size: int = 0  # number of distinct characters; set from the corpus
    embed_size: int = 64  # character embedding width
    hidden_size: int = 256  # units per recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.1  # between recurrent layers and before the output layer

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise UsageError(f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        for name in ("embed_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UsageError("--dropout must be in [0, 1)")


@dataclass
class TrainConfig:
    batch_size: int = 32  # B parallel streams over the training text
    seq_len: int = 128  # T characters per window; gradients flow back this far (truncated BPTT)
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr_frac: float = 0.1  # cosine decay ends at lr * min_lr_frac
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    max_steps: int | None = None  # step budget
    epochs: float | None = None  # budget in passes over the training split
    minutes: float | None = None  # wall-clock budget
    decay_steps: int | None = None  # cosine horizon in steps; default: the step budget (or the time budget)
    eval_every: int = 250  # steps between validations (and checkpoints)
    log_every: int = 25  # steps between metrics lines
    save_every: int | None = None  # extra last.safetensors saves every N steps (besides every evaluation)
    max_nonfinite: int = 5  # consecutive non-finite losses/gradients (steps skipped) before giving up
    val_frac: float = 0.1  # held-out tail of the corpus used for validation
    min_char_count: int = 0  # characters seen fewer times than this map to U+FFFD; 0 = off
    seed: int = 1337  # seeds torch so runs repeat
    device: str = "auto"  # auto: cuda, then mps, then cpu

    def validate(self) -> None:
        for name in ("batch_size", "seq_len", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.min_char_count < 0:
            raise UsageError("--min-char-count must not be negative")
        if not 0 < self.val_frac < 1:
            raise UsageError("--val-frac must be between 0 and 1 (exclusive)")
        if not 0 < self.lr <= 1e30 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise UsageError("--lr must be in (0, 1e30]; --grad-clip and --warmup-steps must not be negative")
        for name in ("max_steps", "epochs", "minutes", "decay_steps", "save_every", "max_nonfinite"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")

    def budgeted(self) -> TrainConfig:
        """With no budget given, train for DEFAULT_STEPS."""
        if self.max_steps is None and self.epochs is None and self.minutes is None:
            return dataclasses.replace(self, max_steps=DEFAULT_STEPS)
        return self


DEFAULT_STEPS = 2000  # budget when none of --max-steps/--epochs/--minutes is given


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
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path} is not valid TOML: {e}") from None
    tables = [data.pop(name, {}) for name in ("model", "train")]
    if not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"--config {path}: [model] and [train] must be tables")
    flat = {k.replace("-", "_"): v for k, v in {**tables[0], **tables[1], **data}.items()}
    unknown = sorted(k for k in flat if k not in (MODEL_KEYS | TRAIN_KEYS) - {"vocab_size"})
    if unknown:
        raise UsageError(f"--config {path}: unknown key(s) {', '.join(unknown)}; see charrnn train --help")
    for key, value in flat.items():
        accepted, noun = TOML_TYPES[FIELD_TYPES[key]]
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise UsageError(f"--config {path}: {key} must be {noun}, not {value!r}")
    return flat


MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
TOML_TYPES = {"int": (int, "an integer"), "float": ((int, float), "a number"), "str": (str, "a string")}
FIELD_TYPES = {f.name: f.type.split(" |")[0] for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)}
BUDGETS = {"max_steps", "epochs", "minutes"}
RESUMABLE = {"max_steps", "epochs", "minutes", "decay_steps", "eval_every", "log_every", "save_every",
             "max_nonfinite", "device"}  # may change on --resume without breaking exact continuation


def build(given: dict) -> tuple[ModelConfig, TrainConfig]:
    """Split a flat {name: value} dict of given settings into validated configs (with a budget)."""
    model = ModelConfig(**{k: v for k, v in given.items() if k in MODEL_KEYS})
    train = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_KEYS})
    model.validate()
    train.validate()
    return model, train.budgeted()


def for_resume(model: dict, train: dict, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """A run's stored configs with the given settings applied; settings that would change the run are refused."""
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
    stop: str = ""  # a sample ends once it has emitted this string (included); "" = only --length

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"--temp must be a finite number >= 0, not {self.temperature}")
        if self.length < 0:
            raise UsageError(f"--length must be >= 0 (0 = endless), not {self.length}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = off), not {self.top_k}")
        if not 0 < self.top_p <= 1:  # also rejects NaN
            raise UsageError(f"--top-p must be in (0, 1] (1 = off), not {self.top_p}")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be at least 1, not {self.num_samples}")
        if self.length == 0 and self.num_samples > 1 and not self.stop:
            raise UsageError("--length 0 (endless) with --num-samples > 1 needs --stop: "
                             "otherwise only the first sample would ever be written")
