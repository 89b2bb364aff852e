"""What a model file must be before its tensors are read: its metadata (types, every setting against its rule,
no lone surrogates) and its tensor table (dtypes, shapes against the model the metadata describes, offsets
within the file). The checksum is unkeyed, so anyone can make a file whose checksum holds: these checks are what
keep a crafted file from hanging or crashing a reader."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from charrnn import config
from charrnn.config import ModelConfig
from charrnn.errors import CheckpointError
from charrnn.model.rnn import CharRNN

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


SECTIONS = {"model": dict, "train": dict, "vocab": list, "progress": dict, "corpus": dict}
NUMBER = (int, float)
PROGRESS = {"step": int, "epoch": int, "window": int, "elapsed_s": NUMBER, "best_val": (*NUMBER, type(None)),
            "best_step": int, "skipped": int}  # what Recorder.meta writes; every number >= 0
LINEAGE = {"file": str, "sha256": str, "step": int, "corpus": str, "keep_vocab": bool, "new": str}  # a fine-tuning
# run's record of the model it started from (training/finetune.py): its file, SHA-256, step, corpus, --keep-vocab and
# the characters new to it


def check_meta(path: Path, meta: dict) -> None:
    """Refuse metadata that is not what charrnn writes (the checksum is unkeyed: anyone can make a file whose
    checksum holds), naming the entry: types, every config value against its rule, the vocabulary's size."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; it was not written by this charrnn")

    if (where := surrogate(meta)) is not None:
        raise bad(f"{where} holds a lone surrogate, which is not a character")
    for key, kind in SECTIONS.items():
        if not isinstance(meta.get(key), kind):
            raise bad(f"{key} is missing or not a JSON {'object' if kind is dict else 'list'}")
    for section, keys in (("model", config.MODEL_KEYS), ("train", config.TRAIN_KEYS)):
        def label(key: str, section=section) -> str:
            return f"{path}: {section}.{key}"

        config.typed(meta[section], keys, label, CheckpointError)
        if section == "model" and (missing := sorted(keys - meta[section].keys())):  # every file has them all
            raise bad(f"model.{missing[0]} is missing")
        config.check(meta[section], label, error=CheckpointError)
    vocab = meta["vocab"]
    if not all(isinstance(c, str) and len(c) == 1 for c in vocab) or len(set(vocab)) != len(vocab):
        raise bad("vocab is not a list of distinct single characters")
    if meta["model"].get("vocab_size") != len(vocab):
        raise bad(f"its vocabulary has {len(vocab)} characters but its model has {meta['model'].get('vocab_size')} "
                  "outputs")
    p = meta["progress"]
    for key, kind in PROGRESS.items():
        if key not in p or not isinstance(p[key], kind) or isinstance(p[key], bool) or (p[key] is not None and not (
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
    if (why := lineage_problem(meta.get("lineage"))) is not None:
        raise bad(why)


def lineage_problem(lineage) -> str | None:
    """What is wrong with a file's "lineage" (a fine-tuning run's record of its source), or None; absent is
    fine (a run trained from scratch, or a file from before fine-tuning)."""
    if lineage is None:
        return None
    if not isinstance(lineage, dict) or lineage.keys() != LINEAGE.keys() or not all(
            type(lineage[k]) is kind for k, kind in LINEAGE.items()):  # type(): a bool is no step
        return f"lineage is not a JSON object of {', '.join(LINEAGE)} with their types"
    if not re.fullmatch("[0-9a-f]{64}", lineage["sha256"]):
        return "lineage.sha256 is not a SHA-256 in hex"
    if not (0 <= lineage["step"] and config.fits(lineage["step"])):
        return "lineage.step is not a number >= 0"
    return None


def surrogate(value, where: str = "metadata") -> str | None:
    """Where in a JSON value a string holds a lone surrogate (U+D800-U+DFFF), or None."""
    if isinstance(value, str):
        return where if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := surrogate(item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")) is not None:
            return found
    return None


def check_table(path: Path, header: dict, data_size: int, meta: dict) -> None:
    """Every tensor entry well formed and inside the file's data, and every model.* tensor there with the shape
    of the model the (already checked) metadata describes; nothing is read or allocated."""
    with torch.device("meta"):
        expected = {f"model.{k}": list(v.shape) for k, v in CharRNN(ModelConfig(**meta["model"]), init=False)
                    .state_dict().items()}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            numel = math.prod(shape)
            well_formed = (dtype in ITEMSIZE and all(isinstance(d, int) and 0 <= d < 1 << 40 for d in shape)
                           and isinstance(begin, int) and isinstance(end, int)
                           and end - begin == numel * ITEMSIZE[dtype])
        except (KeyError, TypeError, ValueError):
            well_formed = False
        if not well_formed:
            raise CheckpointError(f"{path} is damaged: its entry for tensor {name!r} is not a safetensors entry")
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{path} is truncated: tensor {name} lies past the end of its {data_size:,} bytes "
                                  "of data")
    found = {k: header[k]["shape"] for k in header if k.startswith("model.")}
    wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if wrong:
        raise CheckpointError(f"{path}: tensor {wrong[0]} is missing or does not fit the model its metadata "
                              "describes; it was not written by this charrnn")
