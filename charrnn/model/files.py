"""The only code that reads or writes model files: safetensors tensors + JSON metadata, never pickle; and loading
a model from one.

A file holds tensors prefixed model. (weights), optim. (AdamW moments), state. (carried hidden state),
rng. (generator states), and two metadata strings: "charrnn", the JSON metadata (format, configs, vocab,
progress, corpus), and "sha256", a digest of that JSON and of every tensor's name, dtype, shape and bytes,
checked on load, so a flipped byte anywhere in the file is reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charrnn import config
from charrnn import device as devices
from charrnn.atomic import remove_stale, replacing
from charrnn.config import ModelConfig
from charrnn.console import note
from charrnn.data.vocab import REPLACEMENT, Vocab
from charrnn.errors import CheckpointError
from charrnn.model.rnn import CharRNN

FORMAT = 1  # bump when the layout changes; older readers refuse newer files
BEST, LAST = "best.safetensors", "last.safetensors"
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save zip archives


def digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write atomically (charrnn.atomic): a crash at any instant leaves the previous file intact."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps({"format": FORMAT, **meta})
    blob = st_save(tensors, metadata={"charrnn": meta_json, "sha256": digest(meta_json, tensors)})
    with replacing(path) as f:
        f.write(blob)


def clean_temp(directory: Path) -> None:
    """Remove temp files left by saves that were killed midway (charrnn.atomic: only those whose writer is gone)."""
    remove_stale(directory, ".*.tmp")


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on CPU, metadata). Anything but an intact charrnn file is a CheckpointError."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        info = header.get("__metadata__") or {}
        meta_json, expected = info["charrnn"], info["sha256"]
        meta = json.loads(meta_json)
        tensors = st_load(blob)
    except Exception:  # struct, JSON, key and safetensors errors all mean "not a charrnn checkpoint"
        if blob.startswith(PICKLE_MAGIC):
            raise CheckpointError(f"{path} is a pickle/torch.save file, which can run code when loaded; "
                                  "charrnn only loads the .safetensors files it writes") from None
        raise CheckpointError(f"{path} is not a charrnn checkpoint (unreadable or truncated)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has checkpoint format {found!r}; this charrnn reads format {FORMAT}")
    if digest(meta_json, tensors) != expected:
        raise CheckpointError(f"{path} is corrupt: its tensor data does not match its checksum")
    check_meta(path, meta)
    return tensors, meta


def saved_step(path: Path) -> int | None:
    """The training step a file charrnn wrote holds, read from its header alone; None if there is none."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(json.loads(f.read(n))["__metadata__"]["charrnn"])["progress"]["step"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


SECTIONS = {"model": dict, "train": dict, "vocab": list, "progress": dict, "corpus": dict}
NUMBER = (int, float)
PROGRESS = {"step": int, "epoch": int, "window": int, "elapsed_s": NUMBER, "best_val": (*NUMBER, type(None)),
            "best_step": int, "skipped": int}  # what Recorder.meta writes; every number >= 0


def check_meta(path: Path, meta: dict) -> None:
    """Refuse metadata that is not what charrnn writes (the checksum is unkeyed: anyone can make a file whose
    checksum holds), naming the entry: types, every config value against its rule, the vocabulary's size."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; it was not written by this charrnn")

    for key, kind in SECTIONS.items():
        if not isinstance(meta.get(key), kind):
            raise bad(f"{key} is missing or not a JSON {'object' if kind is dict else 'list'}")
    for section, keys in (("model", config.MODEL_KEYS), ("train", config.TRAIN_KEYS)):
        def label(key: str, section=section) -> str:
            return f"{path}: {section}.{key}"

        config.typed(meta[section], keys, label, CheckpointError)
        config.check(meta[section], label, error=CheckpointError)
    vocab = meta["vocab"]
    if not all(isinstance(c, str) and len(c) == 1 for c in vocab) or len(set(vocab)) != len(vocab):
        raise bad("vocab is not a list of distinct single characters")
    if meta["model"].get("vocab_size") != len(vocab):
        raise bad(f"its vocabulary has {len(vocab)} characters but its model has {meta['model'].get('vocab_size')} "
                  "outputs")
    p = meta["progress"]
    for key, kind in PROGRESS.items():
        if not isinstance(p.get(key), kind) or isinstance(p[key], bool) or (p[key] is not None and not (
                0 <= p[key] < math.inf and config.fits(p[key]))):
            raise bad(f"progress.{key} is missing or not a number >= 0")
    epoch = meta.get("epoch", 0)
    if not isinstance(epoch, NUMBER) or isinstance(epoch, bool) or not (0 <= epoch < math.inf and config.fits(epoch)):
        raise bad("epoch is not a number >= 0")
    if not all(isinstance(meta["corpus"].get(k), str) for k in ("name", "fingerprint")):
        raise bad("corpus.name and corpus.fingerprint must be strings")
    inputs = meta["corpus"].get("files", [])  # [label, SHA-256] per input; absent in files of older versions
    pairs = isinstance(inputs, list) and all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
                                             for f in inputs)
    if not pairs:
        raise bad("corpus.files must be a list of [name, digest] pairs")


def find_checkpoint(target: Path | None, root: Path = Path("checkpoints")) -> Path:
    """A model file, a run directory (best, else last), or a directory of runs (its newest run);
    None: the newest run under root."""
    if target is None or (target.is_dir() and not any((target / name).is_file() for name in (BEST, LAST))
                          and newest_run(target)):
        root = target or root
        target = newest_run(root)
        if target is None:
            raise CheckpointError(f"no runs under {root}/; train one first (charrnn train FILE) "
                                  "or name a checkpoint")
    if target.is_dir():
        for name in (BEST, LAST):
            if (target / name).is_file():
                return target / name
        raise CheckpointError(f"{target} holds no {BEST} or {LAST}")
    if not target.exists():
        raise CheckpointError(f"no checkpoint at {target}")
    return target


def newest_run(root: Path) -> Path | None:
    """The run directory under root whose checkpoint was written last, or None."""
    runs = [f for f in root.glob("*/*.safetensors") if f.name in (BEST, LAST)] if root.is_dir() else []
    return max(runs, key=lambda f: f.stat().st_mtime).parent if runs else None


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under prefix, with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def pack(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A Trainer.state_dict() (or its model and progress alone) as a file's tensors and metadata entries:
    model.<name>, optim.<param>.<key>, state.<i>, rng.<name>; progress, rng_python and optim_groups (AdamW's
    settings, kept for reference: resume rebuilds them from the run's config, so no setting is read back)."""
    tensors = {f"model.{k}": v for k, v in sd["model"].items()}
    progress = dict(sd["progress"])
    progress["best_val"] = progress["best_val"] if math.isfinite(progress["best_val"]) else None
    if "optim" not in sd:  # the model alone (best.safetensors)
        return tensors, {"progress": progress}
    tensors.update({f"optim.{i}.{k}": v for i, s in sd["optim"]["state"].items() for k, v in s.items()})
    tensors.update({f"state.{i}": s for i, s in enumerate(sd["state"])})
    tensors.update({f"rng.{k}": v for k, v in sd["rng"].items()})
    return tensors, {"progress": progress, "optim_groups": sd["optim"]["param_groups"], "rng_python": sd["rng_python"]}


def unpack(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """pack's inverse: a file's tensors and metadata as a Trainer.state_dict() (checked by load_state_dict)."""
    optim: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in split(tensors, "optim").items():
        i, name = key.split(".", 1)
        optim.setdefault(int(i), {})[name] = value
    states = split(tensors, "state")
    return {"model": split(tensors, "model"), "optim": {"state": optim, "param_groups": meta.get("optim_groups")},
            "state": [states[str(i)] for i in range(len(states))], "rng": split(tensors, "rng"),
            "rng_python": meta["rng_python"], "progress": meta["progress"]}


def fitting(model: CharRNN, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weights as float32, once each is known to be there with the model's shape (ValueError naming the first
    that is not)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if v.is_floating_point()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | weights.keys() if expected.get(k) != found.get(k))
        raise ValueError(f"tensor model.{wrong[0]} is missing or does not fit the model its metadata describes")
    return {k: v.float() for k, v in weights.items()}


def load_model(path: Path, device: torch.device) -> tuple[CharRNN, Vocab, dict]:
    """A checkpoint file's model (eval mode, on device), vocab and metadata.

    The model is built on the meta device and takes the file's tensors, so a file whose config
    disagrees with its tensors (or asks for a huge model) fails before any memory is allocated."""
    tensors, meta = load(path)  # metadata checked: types, sizes within bounds, vocab size
    folds = meta["train"].get("min_char_count", 0) > 1 and REPLACEMENT in meta["vocab"]
    vocab = Vocab(meta["vocab"], fallback=REPLACEMENT if folds else None)
    with torch.device("meta"):
        model = CharRNN(ModelConfig(**meta["model"]), init=False)
    try:
        weights = fitting(model, split(tensors, "model"))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; it was not written by this charrnn") from None
    model.load_state_dict(weights, assign=True)
    return model.to(device).eval(), vocab, meta


def load_chosen(target: Path | None, device_name: str, precision: str, verb: str):
    """(model, vocab, meta, device, precision) of the checkpoint the user named (find_checkpoint), the device and
    precision checked first; says at a terminal which file, unless a file was named."""
    device = devices.pick(device_name)
    precision = devices.precision(precision, device)
    path = find_checkpoint(target)
    model, vocab, meta = load_model(path, device)
    if target is None or target.is_dir():
        note(f"{verb} {path}")
    return model, vocab, meta, device, precision
