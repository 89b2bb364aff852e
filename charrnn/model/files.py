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
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charrnn import device as devices
from charrnn.atomic import remove_stale, replacing
from charrnn.config import ModelConfig
from charrnn.console import note
from charrnn.data.vocab import REPLACEMENT, Vocab
from charrnn.errors import CheckpointError
from charrnn.model import filecheck
from charrnn.model.rnn import CharRNN

FORMAT = 1  # bump when the layout changes; older readers refuse newer files
BEST, LAST = "best.safetensors", "last.safetensors"
MAX_HEADER = 100 << 20  # bytes: the longest header a safetensors file may have (safetensors' own limit)


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
    """(tensors on CPU, metadata). Anything but an intact charrnn file is a CheckpointError. The header comes
    first: its length bounded, the metadata and the tensor table checked (filecheck.py), and only then are the
    tensors read and the checksum of metadata and tensors compared."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        header = read_header(path, f, size)
        info = header.get("__metadata__")
        if not isinstance(info, dict) or not isinstance(info.get("charrnn"), str) or "sha256" not in info:
            raise CheckpointError(f"{path} is a safetensors file without charrnn's metadata; charrnn loads only "
                                  "the files it writes")
        meta_json, expected = info["charrnn"], info["sha256"]
        try:
            meta = json.loads(meta_json)
        except ValueError:
            raise CheckpointError(f"{path} is damaged: its charrnn metadata is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise CheckpointError(f"{path} has checkpoint format {found!r}; this charrnn reads format {FORMAT}")
        filecheck.check_meta(path, meta)
        filecheck.check_table(path, header, size - f.tell(), meta)
        f.seek(0)
        blob = f.read()
    try:
        tensors = st_load(blob)
    except Exception:  # safetensors' own errors: the table checked above, so the bytes are damaged
        raise CheckpointError(f"{path} is damaged: its tensors cannot be read") from None
    if digest(meta_json, tensors) != expected:
        raise CheckpointError(f"{path} is corrupt: its tensor data does not match its checksum")
    return tensors, meta


def read_header(path: Path, f, size: int) -> dict:
    """A safetensors file's header (8 bytes of length, then that much JSON), the length bounded by the file and by
    MAX_HEADER; a pickle or torch.save file, or a truncated or damaged one, is a CheckpointError saying which."""
    head = f.read(8)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
                                             and head[2:3] not in (b"", b"\x00")):
        raise CheckpointError(f"{path} is a pickle/torch.save file, which can run code when loaded; charrnn only "
                              "loads the .safetensors files it writes")
    if len(head) < 8:
        raise CheckpointError(f"{path} is not a charrnn checkpoint: {size:,} bytes, too few for a safetensors header "
                              "(a truncated file?)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise CheckpointError(f"{path} is not a charrnn checkpoint: its first bytes are not a safetensors header")
    if n > size - 8:
        raise CheckpointError(f"{path} is truncated: a safetensors file whose header needs {n + 8:,} bytes, holding "
                              f"{size:,}; not a whole charrnn checkpoint")
    try:
        header = json.loads(f.read(n))
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a charrnn checkpoint: a damaged safetensors file, or none (its header "
                              "is not JSON)")
    return header


def saved_step(path: Path) -> int | None:
    """The training step a file charrnn wrote holds, read from its header alone; None if there is none."""
    try:
        with open(path, "rb") as f:
            header = read_header(path, f, os.fstat(f.fileno()).st_size)
        return json.loads(header["__metadata__"]["charrnn"])["progress"]["step"]
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None


def find_checkpoint(target: Path | None, root: Path = Path("checkpoints")) -> Path:
    """A model file, a run directory (best, else last), a directory of runs (its newest run), or a bare run name
    under root (a path that exists wins); None: the newest run under root."""
    if target is not None:
        target, also = by_name(target, root)
        if not target.exists():
            raise CheckpointError(f"no checkpoint at {target}{also}; name a model file, a run directory or a run "
                                  f"under {root}/")
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
    return target


def by_name(target: Path, root: Path) -> tuple[Path, str]:
    """(the path target names: itself, or root/target for a bare run name that is no path but exists there; for an
    error, what else was looked for: ", and no root/target" for such a name that is nowhere, else "")."""
    bare = not target.exists() and len(target.parts) == 1
    if bare and (root / target).exists():
        return root / target, ""
    return target, f", and no {root / target}" if bare else ""


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
    keeps = (meta.get("lineage") or {}).get("keep_vocab", False)  # fine-tuned with --keep-vocab: reads as trained
    folds = (meta["train"].get("min_char_count", 0) > 1 or keeps) and REPLACEMENT in meta["vocab"]
    vocab = Vocab(meta["vocab"], fallback=REPLACEMENT if folds else None)
    with torch.device("meta"):
        model = CharRNN(ModelConfig(**meta["model"]), init=False)
    try:
        weights = fitting(model, split(tensors, "model"))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; it was not written by this charrnn") from None
    model.load_state_dict(weights, assign=True)
    return model.to(device).eval(), vocab, meta


def load_chosen(target: Path | None, device_name: str, precision: str, verb: str | None, path: str = "train",
               rows: int = 1) -> tuple[Path, CharRNN, Vocab, dict, torch.device, str]:
    """(file, model, vocab, meta, device, precision) of the checkpoint the user named (find_checkpoint), the device
    and precision (for path and rows: device.precision) checked first; says at a terminal which file ("verb FILE"),
    unless a file was named or verb is None."""
    device = devices.pick(device_name)
    devices.precision(precision, device, path)  # refused before anything is read
    file = find_checkpoint(target)
    model, vocab, meta = load_model(file, device)
    precision = devices.precision(precision, device, path, model.cfg, rows)
    if verb is not None and file != target:  # not the file the user named
        note(f"{verb} {file}")
    return file, model, vocab, meta, device, precision
