"""Fine-tuning: `charrnn train NEW.txt --init-from RUN_OR_FILE`, a new run whose weights start from a trained model.

Characters are mapped by what they are, never by their index (char-rnn's and torch-rnn's -init_from reuse the
indices, so a text with one new character, or its characters in another order, reads as garbage):

    source's vocabulary S   \\n ' ' a b c            the model's M = sorted(S | T)     (--keep-vocab: M = S)
    the text's vocabulary T \\n ' ' A a c            M = \\n ' ' A a b c
    the corpus's ids index T; lut (|T|,) gives each its id in M: [0 1 2 3 5]     (--keep-vocab: A as U+FFFD)

The model's architecture is the source's (flags that would change it are refused) and so are all its weights,
row by row of M: a character of S takes the source's rows for it in the embedding (V, E), the output weights (V, H)
and the output bias (V,); a character new to the model takes a fresh embedding row (the model's own seeded
initialisation), output weights of zero and a bias NEW_MARGIN nats under the lowest log-normaliser the source has
on the start of the text: its probability starts near e^-NEW_MARGIN or below, negligible, yet within reach of a few
dozen steps. (A bound over every possible state, |w|_1 under each bias, lies some 30 nats lower on a trained model,
and new characters then took hundreds of steps to learn.) The optimizer, schedule, step count and budgets start
fresh; config.FINETUNE holds the training defaults that differ when --init-from is given.

The run's metadata records its lineage (the source file, its SHA-256, step and corpus, --keep-vocab, the new
characters); a resume reads its corpus through the same mapping, from the run's own vocabulary.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn import config
from charrnn.config import ModelConfig, TrainConfig
from charrnn.console import counted, info, printable
from charrnn.data.corpus import Corpus, file_sha256
from charrnn.data.vocab import REPLACEMENT, Vocab
from charrnn.errors import CharrnnError, CheckpointError, UsageError
from charrnn.model import files
from charrnn.model.rnn import CharRNN

ARCHITECTURE = ("cell", "embed_size", "hidden_size", "num_layers")  # the source's; a flag that differs is refused
NEW_MARGIN = 14.0  # nats: a new character's logit starts this far under the source's lowest log-normaliser on the
# text (e^-14 < 1e-6: a hundred new characters take under 1e-4 nats from the characters the source knows)
PROBE = (16, 128)  # rows x characters of the text's start the source reads to find its log-normaliser
ROWS = ("embed.weight", "head.weight", "head.bias")  # the tensors with one row per character of the vocabulary
CHUNK = 1 << 20  # ids translated at a time
SHOWN = 100  # new characters listed at most


@dataclass
class Source:
    """The model a fine-tuning run starts from, checked and loaded on the CPU."""

    path: Path
    model: CharRNN
    vocab: Vocab
    meta: dict
    sha256: str  # of the file's bytes
    keep_vocab: bool  # --keep-vocab: the text's new characters are read as U+FFFD, the vocabulary stays

    def lineage(self, new: list[str]) -> dict:
        """The run's metadata entry "lineage" (model/filecheck.py checks it when a file is read)."""
        return {"file": str(self.path), "sha256": self.sha256, "step": self.meta["progress"]["step"],
                "corpus": self.meta["corpus"]["name"], "keep_vocab": self.keep_vocab, "new": "".join(new)}


@dataclass
class Mapped(Corpus):
    """A corpus as the model of a fine-tuning run reads it: vocab is the model's, ids are translated into it."""

    lineage: dict | None = None  # written into every checkpoint of the run (rundir.Recorder)
    source: Source | None = None  # a new run: the model its weights come from (initialised); None on resume


def load_source(init_from: str | None, keep_vocab: bool, resume: bool, out: Path) -> Source | None:
    """The model --init-from names (a model file, a run directory: its best, else last; a run's name under --out),
    with every check a model file gets (model/files.py, filecheck.py), before anything is written; None without
    --init-from."""
    if init_from is None:
        if keep_vocab:
            raise UsageError("--keep-vocab goes with --init-from (it keeps that model's vocabulary); drop it")
        return None
    if resume:
        raise UsageError("--init-from starts a new run from a model, --resume continues a run (a fine-tuning run "
                         "resumes with --resume alone); give one of them")
    try:
        path = files.find_checkpoint(Path(init_from), out)
        model, vocab, meta = files.load_model(path, torch.device("cpu"))
        sha256 = file_sha256(path)
    except CheckpointError as e:
        raise CheckpointError(f"--init-from: {e}") from None
    except OSError as e:
        raise CheckpointError(f"--init-from: cannot read {e.filename or init_from}: {e.strerror}") from None
    return Source(path, model, vocab, meta, sha256, keep_vocab)


def check_apart(source: Source | None, directory: Path) -> None:
    """A fine-tuning run never writes where its source lies: --force would remove the model it starts from."""
    if source is not None and source.path.resolve().parent == directory.resolve():
        raise UsageError(f"--init-from {source.path} lies in {directory}, the run this would write; name the new "
                         "run with --run NEW")


def configs(source: Source, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """The run's configs: the source's architecture (a given setting that differs is refused, naming its flag),
    --dropout if given, else the source's but at least config.FINETUNE_DROPOUT; config.FINETUNE's defaults under
    the given training settings."""
    model = source.meta["model"]
    differs = [f"{config.flag(k)} {given[k]} (the model has {model[k]})" for k in ARCHITECTURE
               if k in given and given[k] != model[k]]
    if differs:
        raise UsageError(f"--init-from {source.path} sets the model's shape, and {'; '.join(differs)} would change "
                         f"it; drop {'it' if len(differs) == 1 else 'them'} (or train a new model without --init-from)")
    dropout = given.get("dropout", max(model["dropout"], config.FINETUNE_DROPOUT))
    shape = {k: model[k] for k in ARCHITECTURE} | {"dropout": dropout}
    return config.build({**config.FINETUNE, **given, **shape})


def in_model_vocab(text: Corpus, meta: dict | None, source: Source | None, cache: Path) -> Corpus:
    """The corpus as a fine-tuning run's model reads it (text itself for any other run): a new run's vocabulary
    is the source's with the text's new characters added (--keep-vocab: the source's, new characters read as
    U+FFFD); a resumed one's is its own (meta), the same way. stderr says which characters are new."""
    lineage = meta.get("lineage") if meta else None
    if source is None and lineage is None:
        return text
    if source is not None:
        fold = source.keep_vocab
        chars = source.vocab.chars if fold else sorted(set(source.vocab.chars) | set(text.vocab.chars))
    else:
        chars, fold = meta["vocab"], lineage["keep_vocab"]
    vocab = Vocab(chars)
    new = [c for c in text.vocab.chars if c not in vocab.index]  # what the model lacks (a new run's union: none)
    if new and not (fold and REPLACEMENT in vocab.index):
        raise CharrnnError(refusal(text.name, new, source))
    if source is not None:
        new = [c for c in text.vocab.chars if c not in source.vocab.index]
        report(text.name, new, source)
        lineage = source.lineage(new)
    lut = np.array([vocab.index.get(c, vocab.index.get(REPLACEMENT, 0)) for c in text.vocab.chars],
                   dtype=vocab.id_dtype)  # (|T|,) each of the text's characters' id in the model's vocabulary
    fields = {f.name: getattr(text, f.name) for f in dataclasses.fields(Corpus)}
    return Mapped(**{**fields, "vocab": vocab, "ids": translate(text.ids, lut, cache)}, lineage=lineage,
                  source=source)


def listed(chars: list[str]) -> str:
    shown = "".join(chars[:SHOWN])
    return f"{shown!r}{f' and {len(chars) - SHOWN:,} more' if len(chars) > SHOWN else ''}"


def refusal(name: str, new: list[str], source: Source | None) -> str:
    """Why a text cannot be read by the model: characters it lacks, with no U+FFFD to read them as."""
    chars = f"{counted(len(new), 'character')} the model does not know ({listed(new)})"
    if source is None:
        return (f"{name} has {chars}; the run cannot read it (a resume takes the corpus it was trained on), "
                "resume with that corpus")
    return (f"--keep-vocab: {name} has {chars} and {source.path} has no U+FFFD to read them as; drop --keep-vocab "
            "to add them to the model, or remove them from the text")


def report(name: str, new: list[str], source: Source) -> None:
    """stderr: the model the run starts from, and how many of the text's characters are new to it, and which."""
    known = len(source.vocab)
    info(f"starting from {source.path} (step {source.meta['progress']['step']:,}, trained on "
         f"{printable(source.meta['corpus']['name'])}): its weights, character by character; optimizer, schedule and "
         "budget start afresh")
    if not new:
        info(f"every character of {name} is in the model's vocabulary ({counted(known, 'character')})")
    elif source.keep_vocab:
        info(f"--keep-vocab: {counted(len(new), 'character')} of {name} new to the model, read as U+FFFD: "
             f"{listed(new)}")
    else:
        info(f"{counted(len(new), 'character')} of {name} new to the model, added to its vocabulary "
             f"({known:,} + {len(new):,}): {listed(new)}")


def translate(ids: np.ndarray, lut: np.ndarray, directory: Path) -> np.ndarray:
    """ids (N,) of the text's vocabulary as ids (N,) of the model's. The identity returns ids itself (the id
    cache's memory map); otherwise the copy lies in an unlinked temporary file beside the id cache, memory-mapped
    like the cache (page cache, which the system can drop, rather than the process's memory), CHUNK ids at a
    time."""
    if lut.dtype == ids.dtype and np.array_equal(lut, np.arange(len(lut))):
        return ids
    with tempfile.TemporaryFile(dir=directory) as f:  # the map keeps the file once it is closed and gone
        out = np.memmap(f, dtype=lut.dtype, mode="w+", shape=(len(ids),))  # (N,)
    for start in range(0, len(ids), CHUNK):
        out[start : start + CHUNK] = lut[ids[start : start + CHUNK]]
    return out


@torch.no_grad()
def initialised(model: CharRNN, text: Corpus) -> CharRNN:
    """model (freshly initialised, vocabulary text.vocab) with the weights of the source of a new fine-tuning run
    (text is Mapped), character by character; any other model as it is."""
    source = getattr(text, "source", None)
    if source is None:
        return model
    own, theirs = model.state_dict(), source.model.state_dict()  # own: the parameters themselves
    device = own[ROWS[0]].device
    rows = [source.vocab.index.get(c) for c in text.vocab.chars]  # (V,) the source's row of each, None: new
    at = torch.tensor([i for i, r in enumerate(rows) if r is not None], dtype=torch.long, device=device)
    take = torch.tensor([r for r in rows if r is not None], dtype=torch.long)
    new = torch.tensor([i for i, r in enumerate(rows) if r is None], dtype=torch.long, device=device)
    for name, value in theirs.items():
        if name in ROWS:
            own[name][at] = value[take].to(device)  # shared characters' rows, wherever they now are
        else:
            own[name].copy_(value)  # the recurrent layers, as they are
    own["head.weight"][new] = 0.0  # (new, H): no say in any state yet
    own["head.bias"][new] = new_bias(source, text)
    return model


def new_bias(source: Source, text: Corpus) -> float:
    """The bias of a new character's output: NEW_MARGIN nats under the lowest log-normaliser (logsumexp of the
    logits) the source has on the start of the text: its characters the source knows, in rows of PROBE[1] read from
    a zero state, as a sample starts. Where it knows none, at the zero state alone (whose logits are the bias)."""
    to_source = np.array([source.vocab.index.get(c, -1) for c in text.vocab.chars], dtype=np.int64)  # (V,)
    ids = to_source[np.asarray(text.ids[: 2 * PROBE[0] * PROBE[1]])]
    ids = torch.from_numpy(ids[ids >= 0][: PROBE[0] * PROBE[1]])  # (P,) ids of the source's vocabulary
    if not len(ids):
        return float(torch.logsumexp(source.model.head.bias.double(), dim=0)) - NEW_MARGIN
    x = ids[: len(ids) // PROBE[1] * PROBE[1]].reshape(-1, PROBE[1]) if len(ids) >= PROBE[1] else ids[None]  # (R, T)
    with torch.no_grad():
        logits, _ = source.model(x)  # (R, T, V_source)
    return float(torch.logsumexp(logits.double(), dim=-1).min()) - NEW_MARGIN
