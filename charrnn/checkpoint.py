"""The only code that reads or writes model files: safetensors tensors + JSON metadata, never pickle.

A file holds tensors prefixed model. (weights), optim. (AdamW moments), state. (carried hidden state),
rng. (generator states), and two metadata strings: "charrnn", the JSON metadata (format, configs, vocab,
progress, corpus), and "sha256", a digest of that JSON and of every tensor's name, dtype, shape and bytes,
checked on load, so a flipped byte anywhere in the file is reported.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charrnn.atomic import replacing
from charrnn.errors import CheckpointError

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
    """Remove temp files left by a save that was killed midway."""
    for tmp in directory.glob(".*.safetensors.*.tmp"):
        tmp.unlink(missing_ok=True)


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
    return tensors, meta


def resolve(target: Path | None, root: Path = Path("checkpoints")) -> Path:
    """A model file, or a run directory (best, else last); None: the newest run under root."""
    if target is None:
        runs = [f for f in root.glob("*/*.safetensors") if f.name in (BEST, LAST)] if root.is_dir() else []
        if not runs:
            raise CheckpointError(f"no runs under {root}/; train one first (charrnn train FILE) "
                                  "or name a checkpoint")
        target = max(runs, key=lambda f: f.stat().st_mtime).parent
    if target.is_dir():
        for name in (BEST, LAST):
            if (target / name).is_file():
                return target / name
        raise CheckpointError(f"{target} holds no {BEST} or {LAST}")
    if not target.exists():
        raise CheckpointError(f"no checkpoint at {target}")
    return target


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under prefix, with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as optim.<param>.<key> tensors plus JSON param groups."""
    sd = optimizer.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, sd["param_groups"]


def unpack_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in split(tensors, "optim").items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
