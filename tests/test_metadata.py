"""Checkpoints whose checksum holds but whose metadata or tensors are not what charrnn writes.

The SHA-256 in a checkpoint is unkeyed, so anyone can rewrite a file and recompute it (rewrite() below does
exactly that). Every path that loads a file (sample, score, info, train --resume) must then refuse it with
one `error:` line naming the file and the offending entry: exit 1, no traceback, nothing on stdout.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, run_cli

from charrnn.model import files as checkpoint

VOCAB = 13  # distinct characters in make_text(6000)'s default alphabet: a-k, space, newline
RESUME = [*TINY, "--max-steps", "8", "--eval-every", "2", "--resume"]  # the original run's flags, a larger budget


@pytest.fixture
def run_dir(origin, in_tmp) -> Path:
    """./tiny.txt and ./checkpoints/tiny/{best,last}.safetensors, metrics.jsonl: a finished, resumable run."""
    shutil.copy(origin / "tiny.txt", in_tmp / "tiny.txt")
    shutil.copytree(origin / "checkpoints" / "tiny", in_tmp / "checkpoints" / "tiny")
    meta = checkpoint.load(in_tmp / "checkpoints" / "tiny" / "last.safetensors")[1]
    assert len(meta["vocab"]) == VOCAB and meta["progress"]["step"] == 4
    return in_tmp / "checkpoints" / "tiny"


def checksum_holds(path: Path) -> bool:
    """Whether the file's own SHA-256 matches its metadata and tensors (what checkpoint.load checks first)."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(blob[8 : 8 + n])["__metadata__"]
    from safetensors.torch import load

    return checkpoint.digest(info["charrnn"], load(blob)) == info["sha256"]


def rewrite(source: Path, target: Path, edit) -> Path:
    """target := source with edit(tensors, meta) applied and a freshly computed, valid checksum."""
    tensors, meta = checkpoint.load(source)
    meta.pop("format")
    edit(tensors, meta)
    checkpoint.save(target, tensors, meta)
    assert checksum_holds(target)  # so a refusal is the metadata check's doing, never the checksum's
    return target


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def refusal(code: int, stdout: str, stderr: str, *fragments: str, only_line: bool = True) -> str:
    """Exit 1, nothing on stdout, no traceback, exactly one `error:` line holding every fragment and ending
    stderr; with only_line, no other line at all."""
    assert code == 1, (code, stderr)
    assert stdout == "", stdout
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    if only_line:
        assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def load_command(command: str, path: str) -> list[str]:
    return {"sample": ["sample", path, "-n", "5", "--seed", "1"], "score": ["score", "tiny.txt", "-c", path],
            "info": ["info", path]}[command]


def set_tensor(name: str, make):
    return lambda t, m: t.update({name: make(t[name])})


# (id, edit(tensors, meta), fragments the error line must hold besides the file's name)
CASES = [
    ("train-is-a-number", lambda t, m: m.update(train=5),
     ["train is missing or not a JSON object", "not written by this charrnn"]),
    ("vocab-shorter-than-the-model", lambda t, m: m["vocab"].pop(),
     [f"vocabulary has {VOCAB - 1} characters", f"{VOCAB} outputs"]),
    ("progress-elapsed-nan", lambda t, m: m["progress"].update(elapsed_s=float("nan")), ["progress.elapsed_s"]),
    ("progress-elapsed-infinite", lambda t, m: m["progress"].update(elapsed_s=float("inf")), ["progress.elapsed_s"]),
    ("progress-best-val-nan", lambda t, m: m["progress"].update(best_val=float("nan")), ["progress.best_val"]),
    ("progress-step-negative", lambda t, m: m["progress"].update(step=-1), ["progress.step"]),
    ("progress-window-negative", lambda t, m: m["progress"].update(window=-3), ["progress.window"]),
    ("progress-best-val-string", lambda t, m: m["progress"].update(best_val="low"), ["progress.best_val"]),
    ("progress-step-string", lambda t, m: m["progress"].update(step="4"), ["progress.step"]),
    ("epoch-negative", lambda t, m: m.update(epoch=-0.5), ["epoch is not a number >= 0"]),
    ("epoch-nan", lambda t, m: m.update(epoch=float("nan")), ["epoch is not a number >= 0"]),
    ("model-tensor-wrong-shape", set_tensor("model.head.weight", lambda w: torch.zeros(w.shape[0], w.shape[1] + 1)),
     ["model.head.weight"]),
    ("model-tensor-int64", set_tensor("model.head.bias", lambda b: b.to(torch.int64)), ["model.head.bias"]),
    ("model-unknown-tensor", lambda t, m: t.update({"model.extra.weight": torch.zeros(3)}), ["model.extra.weight"]),
    ("model-unknown-setting", lambda t, m: m["model"].update(colour="blue"), ["model.colour"]),
    ("model-setting-wrong-type", lambda t, m: m["model"].update(hidden_size="16"), ["model.hidden_size"]),
]
IDS = [case[0] for case in CASES]
# Resume loads the weights into the trainer's model with load_state_dict, not through files.load_model:


@pytest.mark.parametrize("command", ["sample", "score", "info"])
@pytest.mark.parametrize(("case", "edit", "fragments"), CASES, ids=IDS)
def test_loading_refuses_foreign_metadata(run_dir, case, edit, fragments, command):
    rewrite(run_dir / "best.safetensors", Path("hostile.safetensors"), edit)
    result = cli(*load_command(command, "hostile.safetensors"))
    refusal(result.exit_code, result.stdout, result.stderr, "hostile.safetensors", *fragments)


def test_a_consistently_shrunk_vocabulary_is_refused_by_the_tensor_shapes(run_dir):
    """vocab and vocab_size agree (12) but the weights have 13 rows: the shapes give it away."""
    def shrink(t, m):
        m["vocab"].pop()
        m["model"]["vocab_size"] = VOCAB - 1

    rewrite(run_dir / "best.safetensors", Path("hostile.safetensors"), shrink)
    for command in ("sample", "score", "info"):
        result = cli(*load_command(command, "hostile.safetensors"))
        refusal(result.exit_code, result.stdout, result.stderr, "hostile.safetensors", "model.embed.weight")
    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", shrink)
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *RESUME)  # the corpus's characters no longer match the run's vocabulary
    refusal(result.exit_code, result.stdout, result.stderr, only_line=False)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("command", ["sample", "score", "info", "resume"])
def test_a_million_layers_is_refused_at_once(run_dir, command):
    """Refused from the metadata alone: no model is built. A real process with a 20 s limit (it ends in well
    under a second of work; building the model would take minutes and far more memory)."""
    def huge(t, m):
        m["model"]["num_layers"] = 10**6

    if command == "resume":
        rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", huge)
        before = snapshot(run_dir)
        args, name = ["train", "tiny.txt", *RESUME], "last.safetensors"
    else:
        rewrite(run_dir / "best.safetensors", Path("hostile.safetensors"), huge)
        args, name = load_command(command, "hostile.safetensors"), "hostile.safetensors"
    try:
        proc = run_cli(*args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"charrnn {' '.join(args)} was still running after 20 s")
    refusal(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), name,
            "model.num_layers must be from 1 to 64, not 1000000")
    if command == "resume":
        assert snapshot(run_dir) == before


def windows(meta: dict) -> int:
    """Training windows per epoch, from what the run saved: epoch = progress.epoch + window / windows."""
    p = meta["progress"]
    return round(p["window"] / (meta["epoch"] - p["epoch"]))


RESUME_ONLY = [
    ("optim-exp-avg-wrong-shape",
     set_tensor("optim.0.exp_avg", lambda a: torch.zeros(a.shape[0], a.shape[1] + 1)), ["optimizer state optim.0.*"]),
    ("optim-exp-avg-sq-wrong-shape", set_tensor("optim.2.exp_avg_sq", lambda a: a[:-1].clone()),
     ["optimizer state optim.2.*"]),
    ("optim-step-wrong-shape", set_tensor("optim.1.step", lambda s: torch.zeros(2)), ["optimizer state optim.1.*"]),
    ("state-wrong-batch", set_tensor("state.0", lambda s: torch.zeros(s.shape[0], s.shape[1] + 1, s.shape[2])),
     ["carried state"]),
    ("state-wrong-width", set_tensor("state.0", lambda s: torch.zeros(s.shape[0], s.shape[1], s.shape[2] - 1)),
     ["carried state"]),
    ("window-far-past-the-end", lambda t, m: m["progress"].update(window=10**6),
     ["stream cursor (1000000)", "windows"]),
]


@pytest.mark.parametrize(("case", "edit", "fragments"), CASES + RESUME_ONLY,
                         ids=IDS + [c[0] for c in RESUME_ONLY])
def test_resume_refuses_foreign_metadata_and_leaves_the_run_intact(run_dir, case, edit, fragments):
    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", edit)
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *RESUME)
    refusal(result.exit_code, result.stdout, result.stderr, "last.safetensors", *fragments, only_line=False)
    assert snapshot(run_dir) == before


def test_resume_refuses_the_window_one_past_the_last(run_dir):
    n = windows(checkpoint.load(run_dir / "last.safetensors")[1])
    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", lambda t, m: m["progress"].update(window=n))
    before = snapshot(run_dir)
    result = cli("train", "tiny.txt", *RESUME)
    refusal(result.exit_code, result.stdout, result.stderr, "last.safetensors", f"stream cursor ({n})",
            f"{n} windows", only_line=False)
    assert snapshot(run_dir) == before


def test_resume_accepts_the_last_window(run_dir):
    """The boundary's other side: window = windows - 1 is where an epoch's last step starts."""
    n = windows(checkpoint.load(run_dir / "last.safetensors")[1])
    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors",
            lambda t, m: m["progress"].update(window=n - 1))
    result = cli("train", "tiny.txt", *RESUME)
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(run_dir / "last.safetensors")[1]["progress"]["step"] == 8


def test_a_faithful_rewrite_still_loads_everywhere(run_dir):
    """The control for every test above: rewrite() with no edit yields a file every command accepts."""
    rewrite(run_dir / "best.safetensors", Path("same.safetensors"), lambda t, m: None)
    for command in ("sample", "score", "info"):
        result = cli(*load_command(command, "same.safetensors"))
        assert result.exit_code == 0 and result.stdout, (command, result.stderr)
    rewrite(run_dir / "last.safetensors", run_dir / "last.safetensors", lambda t, m: None)
    result = cli("train", "tiny.txt", *RESUME)
    assert result.exit_code == 0, result.stderr
    assert "resuming" in result.stderr
