"""Fine-tuning (`train NEW --init-from RUN_OR_FILE`): characters mapped by what they are, the source's shape kept,
its lineage recorded, resumes exact, and a bad source refused before anything is written.

The model before the first step is checked through the Python API (training/finetune.py builds it exactly as train
does, from session.load_corpus and session.build_model); the CLI runs train one step at a learning rate too small to
move a weight, and are compared with the source through `score` and `sample`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, make_text
from test_hostile import rewrite as crafted  # a model file with edited tensors or metadata and a valid checksum

from charrnn import config
from charrnn.data.batches import evaluation_streams
from charrnn.data.vocab import REPLACEMENT, Vocab
from charrnn.generation.sample import generate
from charrnn.model import files as checkpoint
from charrnn.model.evaluate import evaluate
from charrnn.training import finetune, session

CPU = torch.device("cpu")
FP32 = ["--precision", "fp32"]
NEW_ALPHABET = "ABCdefgh ijkxyz\n"  # shares d-k, space and newline with the source; lacks a-c; A-C sort before all
NEW_CHARS = "ABCxyz"
SUBSET_ALPHABET = "kjih gfed\n"  # the source's characters only, fewer of them: its own ids are not the source's
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs, once per module: one of each cell (lstm with --dropout 0.1), and fffd (a gru whose
    vocabulary holds U+FFFD, from --min-char-count 2 over a text with two rare characters)."""
    root = tmp_path_factory.mktemp("sources")
    (root / "tiny.txt").write_text(make_text(6000), encoding="utf-8")
    (root / "rare.txt").write_text(make_text(6000) + "QR", encoding="utf-8")
    runs = {"lstm": ["--cell", "lstm", "--dropout", "0.1"], "gru": ["--cell", "gru"], "rnn": ["--cell", "rnn"],
            "fffd": ["--min-char-count", "2"]}
    for name, flags in runs.items():
        text = root / ("rare.txt" if name == "fffd" else "tiny.txt")
        result = cli("train", text, *TINY, *FP32, "--max-steps", "20", "--eval-every", "10", "--out",
                     root / "checkpoints", "--run", name, *flags)
        assert result.exit_code == 0, result.stderr
    return {name: root / "checkpoints" / name for name in runs}


@pytest.fixture
def new_text(in_tmp) -> Path:
    path = in_tmp / "new.txt"
    path.write_text(make_text(3000, seed=3, alphabet=NEW_ALPHABET), encoding="utf-8")
    return path


def start(source: Path, text: Path, keep_vocab: bool = False, **given):
    """(the source, the corpus as the new model reads it, the new model before its first step), as train makes
    them."""
    src = finetune.load_source(str(source), keep_vocab, False, Path("checkpoints"))
    model_cfg, cfg = finetune.configs(src, {"device": "cpu", "precision": "fp32", **given})
    mapped = session.load_corpus([str(text)], None, Path("checkpoints"), cfg, None, False, src)
    return src, mapped, session.build_model(mapped, model_cfg, cfg, CPU).eval()


def loss(model, vocab: Vocab, text: str) -> float:
    """Nats per character over text, in the tiny runs' validation layout (4 streams, windows of 16)."""
    return evaluate(model, evaluation_streams(vocab.encode(text), 4, 16), CPU)


def greedy(model, vocab: Vocab, n: int = 300, temperature: float = 0.0, seed: int = 1) -> str:
    return "".join(generate(model, vocab, "", n, temperature, seed, CPU))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_before_the_first_step_the_model_is_the_source_character_by_character(sources, new_text, cell):
    src, mapped, model = start(sources[cell], new_text)
    assert mapped.vocab.chars == sorted(set(src.vocab.chars) | set(NEW_ALPHABET))
    assert mapped.vocab.decode(mapped.ids) == new_text.read_text(encoding="utf-8")  # ids translated exactly
    known = make_text(3000, seed=9)  # the source's characters alone
    assert abs(loss(model, mapped.vocab, known) - loss(src.model, src.vocab, known)) < 1e-4
    ids = torch.from_numpy(src.vocab.encode(known).astype("int64"))[None]  # (1, N)
    with torch.no_grad():
        theirs = src.model(ids)[0][0]  # (N, V_source)
        ours = model(torch.from_numpy(mapped.vocab.encode(known).astype("int64"))[None])[0][0]  # (N, V)
    at = [mapped.vocab.index[c] for c in src.vocab.chars]
    assert torch.allclose(ours[:, at], theirs, atol=1e-5)  # every shared character's logit, wherever it now is
    new = [mapped.vocab.index[c] for c in NEW_CHARS]
    assert ours.softmax(-1)[:, new].sum(-1).max() < 1e-5  # the new characters start near probability zero
    assert greedy(model, mapped.vocab) == greedy(src.model, src.vocab)


def test_the_same_characters_in_another_order_sample_as_the_source_at_step_0(sources, in_tmp):
    text = in_tmp / "subset.txt"
    text.write_text(make_text(3000, seed=4, alphabet=SUBSET_ALPHABET), encoding="utf-8")
    src, mapped, model = start(sources["gru"], text)
    own = sorted(set(SUBSET_ALPHABET))
    assert own != src.vocab.chars[: len(own)]  # its own ids are not the source's: reusing indices would be garbage
    assert mapped.vocab.chars == src.vocab.chars
    for seed in (1, 2):
        assert greedy(model, mapped.vocab, 400, 1.0, seed) == greedy(src.model, src.vocab, 400, 1.0, seed)
    result = cli("train", text, "--init-from", sources["gru"], *TINY, *FP32, "--max-steps", "1", "--lr", "1e-9")
    assert result.exit_code == 0, result.stderr
    assert "every character of subset.txt is in the model's vocabulary (13 characters)" in result.stderr
    assert sampled(Path("checkpoints/subset"), *FP32) == sampled(sources["gru"], *FP32)  # the same seed, temperature 1


def test_fine_tuning_defaults_and_the_sources_dropout(sources, in_tmp):
    src = finetune.load_source(str(sources["lstm"]), False, False, Path("checkpoints"))
    model_cfg, cfg = finetune.configs(src, {})
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.warmup_steps, cfg.max_steps) == (
        1e-3, 8, 0.3, 20, config.DEFAULT_STEPS)
    assert (model_cfg.cell, model_cfg.hidden_size, model_cfg.dropout) == ("lstm", 16, 0.2)  # the source's 0.1: 0.2
    src.meta["model"]["dropout"] = 0.3
    assert finetune.configs(src, {})[0].dropout == 0.3  # the source's, above 0.2
    model_cfg, cfg = finetune.configs(src, {"lr": 1e-3, "warmup_steps": 0, "dropout": 0.0, "hidden_size": 16})
    assert (cfg.lr, cfg.warmup_steps, model_cfg.dropout) == (1e-3, 0, 0.0)  # the user's
    assert finetune.configs(src, {"batch_size": 32})[1].batch_size == 32


def one_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def scored(text: Path, model: Path) -> float:
    result = cli("score", text, "-c", model, "--json", *FP32, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["nats_per_char"]


def sampled(model: Path, *flags: str) -> str:
    result = cli("sample", model, "-n", "300", "--seed", "7", "--device", "cpu", *flags)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_a_fine_tuning_run_starts_where_its_source_is_and_records_its_lineage(sources, new_text, in_tmp):
    source = sources["gru"] / "best.safetensors"
    result = cli("train", new_text, "--init-from", sources["gru"], *TINY, *FP32, "--max-steps", "1", "--lr", "1e-9")
    assert result.exit_code == 0, result.stderr
    assert f"6 characters of new.txt new to the model, added to its vocabulary (13 + 6): {NEW_CHARS!r}" in result.stderr
    assert f"starting from {source}" in result.stderr
    run = Path("checkpoints/new")
    known = in_tmp / "known.txt"
    known.write_text(make_text(3000, seed=9), encoding="utf-8")
    assert abs(scored(known, run) - scored(known, source)) < 1e-4  # one step at lr 1e-9 moves nothing that shows
    assert sampled(run, "--temp", "0") == sampled(source, "--temp", "0")
    meta = checkpoint.load(run / "best.safetensors")[1]
    assert meta["lineage"] == {"file": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                               "step": 20, "corpus": "tiny.txt", "keep_vocab": False, "new": NEW_CHARS}
    info = cli("info", run)
    assert info.exit_code == 0, info.stderr
    line = next(x for x in info.stdout.splitlines() if x.startswith("started from"))
    assert line == (f"started from {source} (step 20, trained on tiny.txt; sha256 {meta['lineage']['sha256'][:16]}"
                    f"...); 6 new characters added: {NEW_CHARS}")
    assert "started from" not in cli("info", source).stdout  # a run trained from scratch has no lineage


def test_keep_vocab_reads_new_characters_as_fffd(sources, new_text):
    src, mapped, _ = start(sources["fffd"], new_text, keep_vocab=True)
    assert mapped.vocab.chars == src.vocab.chars and REPLACEMENT in src.vocab.chars
    text = new_text.read_text(encoding="utf-8")
    assert mapped.vocab.decode(mapped.ids) == "".join(REPLACEMENT if c in NEW_CHARS else c for c in text)
    result = cli("train", new_text, "--init-from", sources["fffd"], "--keep-vocab", *TINY, "--max-steps", "2")
    assert result.exit_code == 0, result.stderr
    assert f"--keep-vocab: 6 characters of new.txt new to the model, read as U+FFFD: {NEW_CHARS!r}" in result.stderr
    meta = checkpoint.load(Path("checkpoints/new/best.safetensors"))[1]
    assert meta["vocab"] == src.vocab.chars and meta["lineage"]["keep_vocab"] is True
    assert "6 new characters read as U+FFFD (--keep-vocab): ABCxyz" in cli("info", "checkpoints/new").stdout


def test_keep_vocab_without_fffd_in_the_source_is_refused_naming_the_characters(sources, new_text):
    line = one_error(cli("train", new_text, "--init-from", sources["gru"], "--keep-vocab", *TINY), 1)
    assert f"6 characters the model does not know ({NEW_CHARS!r})" in line and "no U+FFFD" in line
    assert not Path("checkpoints").exists()  # what the command made is gone again


@pytest.mark.parametrize("flags, says", [
    (["--hidden-size", "32"], "--hidden-size 32 (the model has 16)"),
    (["--num-layers", "2"], "--num-layers 2 (the model has 1)"),
    (["--embed-size", "4"], "--embed-size 4 (the model has 8)"),
    (["--cell", "LSTM"], "--cell lstm (the model has gru)"),
    (["--config", "shape.toml"], "--hidden-size 64 (the model has 16)"),
    (["--resume"], "--init-from starts a new run from a model, --resume continues a run"),
])
def test_flags_that_change_the_shape_are_refused_naming_the_flag(sources, new_text, flags, says):
    Path("shape.toml").write_text("[model]\nhidden_size = 64\n", encoding="utf-8")
    line = one_error(cli("train", new_text, "--init-from", sources["gru"], *flags), 2)
    assert says in line, line
    assert not Path("checkpoints").exists()


def test_keep_vocab_alone_and_a_checkpoint_as_input_point_to_init_from(sources, new_text):
    assert "--keep-vocab goes with --init-from" in one_error(cli("train", new_text, "--keep-vocab"), 2)
    best = sources["gru"] / "best.safetensors"
    line = one_error(cli("train", best), 2)
    assert f"to start a new run from its weights: charrnn train NEW.txt --init-from {best}; to continue" in line


def last(run: str) -> dict[str, torch.Tensor]:
    return checkpoint.load(Path("checkpoints") / run / "last.safetensors")[0]


def test_resume_of_a_fine_tuning_run_is_bit_identical(sources, new_text):
    def train(run: str, *extra: str) -> None:
        result = cli("train", new_text, "--init-from", sources["gru"], *TINY, "--run", run, "--eval-every", "4",
                     "--warmup-steps", "3", *extra)
        assert result.exit_code == 0, result.stderr

    train("ref", "--max-steps", "10")
    train("split", "--max-steps", "5", "--decay-steps", "10")
    resumed = cli("train", new_text, *TINY, "--run", "split", "--eval-every", "4", "--max-steps", "10", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming checkpoints/split at step 5" in resumed.stderr and "new to the model" not in resumed.stderr
    reference, tensors = last("ref"), last("split")
    assert tensors.keys() == reference.keys() and any(k.startswith("optim.") for k in tensors)
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)
    assert checkpoint.load(Path("checkpoints/split/last.safetensors"))[1]["lineage"]["new"] == NEW_CHARS
    other = Path("other.txt")
    other.write_text(new_text.read_text(encoding="utf-8") + "Q", encoding="utf-8")
    line = one_error(cli("train", other, *TINY, "--run", "split", "--max-steps", "12", "--resume", "--force"), 1)
    assert "other.txt has 1 character the model does not know ('Q')" in line


def lineage_of(sha256) -> dict:
    return {"file": "x", "sha256": sha256, "step": 1, "corpus": "c", "keep_vocab": False, "new": ""}


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def bad_source(kind: str, good: Path) -> tuple[Path, str]:
    """A source file that fails the checks, and what its refusal says."""
    path = Path("bad") / "best.safetensors"
    path.parent.mkdir()
    blob = good.read_bytes()
    if kind == "pickle":
        path.write_bytes(pickle.dumps(Payload()))
        return path, "pickle"
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
        return path, "truncated"
    if kind == "flipped":
        path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:])
        return path, "corrupt"
    if kind == "huge":
        return crafted(good, path, lambda t, m: m["model"].update(hidden_size=10**9)), "hidden_size must be from 1"
    if kind == "lineage":
        return crafted(good, path, lambda t, m: m.update(lineage=lineage_of("not hex"))), "lineage.sha256"
    if kind == "text":
        path.write_text("just text\n", encoding="utf-8")
        return path, "not a charrnn checkpoint"
    return Path("nowhere"), "no checkpoint at nowhere"


@pytest.mark.parametrize("kind", ["pickle", "truncated", "flipped", "huge", "lineage", "text", "missing"])
def test_a_source_that_fails_the_checks_is_refused_before_anything_is_written(sources, new_text, kind):
    path, says = bad_source(kind, sources["gru"] / "best.safetensors")
    before = sorted(p for p in Path(".").rglob("*"))
    line = one_error(cli("train", new_text, "--init-from", path, *TINY), 1)
    assert line.startswith("error: --init-from: ") and says in line, line
    assert sorted(p for p in Path(".").rglob("*")) == before  # no run directory, no corpus cache, no pwned


def test_a_lineage_that_is_not_what_charrnn_writes_is_refused_by_every_reader(sources, in_tmp):
    good = sources["gru"] / "best.safetensors"
    for record, says in [({"file": 1}, "lineage is not a JSON object"), (lineage_of("a" * 64) | {"step": True},
                                                                           "lineage is not a JSON object"),
                         (lineage_of("a" * 64) | {"step": -1}, "lineage.step")]:
        path = crafted(good, in_tmp / "odd.safetensors", lambda t, m, record=record: m.update(lineage=record))
        assert says in one_error(cli("info", path), 1)
    fine = crafted(good, in_tmp / "fine.safetensors", lambda t, m: m.update(lineage=lineage_of("a" * 64)))
    assert cli("info", fine).exit_code == 0


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_fine_tune_as_one(sources, new_text):
    args = [*TINY, *FP32, "--max-steps", "4", "--eval-every", "2", "--threads", "1", "--init-from", sources["gru"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    launch = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "charrnn", "--", "train", str(new_text)]
    result = subprocess.run([*launch, *map(str, args), "--run", "two"], capture_output=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().count("6 characters of new.txt new to the model") == 1  # rank 0 alone says it
    one = cli("train", new_text, *args, "--run", "one")
    assert one.exit_code == 0, one.stderr
    vals = {run: [json.loads(r)["val_loss"] for r in (Path("checkpoints") / run / "metrics.jsonl").read_text()
                  .splitlines() if "val_loss" in r] for run in ("one", "two")}
    assert len(vals["one"]) == 2 and vals["two"] == pytest.approx(vals["one"], abs=1e-4)
    metas = [checkpoint.load(Path("checkpoints") / run / "last.safetensors")[1] for run in ("one", "two")]
    assert metas[0]["lineage"] == metas[1]["lineage"] and metas[0]["vocab"] == metas[1]["vocab"]


def test_a_run_directory_or_name_under_out_is_a_source(sources, new_text):
    shutil.copytree(sources["gru"], "checkpoints/base")
    result = cli("train", new_text, "--init-from", "base", *TINY, "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    assert "starting from checkpoints/base/best.safetensors" in result.stderr


def test_a_run_never_starts_from_a_model_in_its_own_directory(sources, new_text):
    """`train base.txt --init-from base --force` would remove the model it starts from: refused, nothing touched."""
    shutil.copytree(sources["gru"], "checkpoints/base")
    before = {p: p.read_bytes() for p in Path("checkpoints/base").iterdir()}
    for extra in ([], ["--force"]):
        result = cli("train", new_text, "--init-from", "base", "--run", "base", *TINY, "--max-steps", "1", *extra)
        line = one_error(result, 2)
        assert "lies in checkpoints/base, the run this would write; name the new run with --run NEW" in line
    assert {p: p.read_bytes() for p in Path("checkpoints/base").iterdir()} == before
