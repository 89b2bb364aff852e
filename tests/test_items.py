"""Items mode: train on a list, sample new items told apart from copies, several temperatures, a prompt per line,
score a list item by item; all through the CLI with real files."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli

from charrnn.data import items
from charrnn.model import files

ABC = ["".join(p) for n in (2, 3) for p in itertools.product("abc", repeat=n)]  # all 36 strings of 2-3 of a, b, c
FAST = [*TINY, "--batch-size", "2", "--seq-len", "8", "--eval-every", "10", "--precision", "fp32"]


def train(path: Path, run: str, *extra: str):
    result = cli("train", path, *FAST, "--run", run, *extra)
    assert result.exit_code == 0, result.stderr
    return result


def memory(run: str) -> tuple[items.Memory, list[str]]:
    directory = Path("checkpoints") / run
    return items.load_memory(directory / items.MEMORY), files.load(directory / "last.safetensors")[1]["vocab"]


def hashes(names: list[str], vocab: list[str]) -> set[int]:
    index = {c: i for i, c in enumerate(vocab)}
    return {items.item_hash(np.array([index[c] for c in name])) for name in names}


@pytest.fixture(scope="module")
def abc(tmp_path_factory) -> Path:
    """A run trained on the 36 strings of 2-3 letters a, b, c (each once, shuffled, 3 held out): what it samples
    is mostly a training or held-out item, now and then a new one."""
    root = tmp_path_factory.mktemp("abc")
    (root / "abc.txt").write_text("\n".join(sorted(ABC)) + "\n", encoding="utf-8")
    result = cli("train", root / "abc.txt", *FAST, "--items", "--max-steps", "60", "--out", root / "checkpoints",
                 "--lr", "1e-2")
    assert result.exit_code == 0, result.stderr
    assert "36 items (3 held out, whole; shuffled with --seed 1337)" in result.stderr
    return root


@pytest.fixture
def run(abc: Path) -> Path:
    shutil.copytree(abc / "checkpoints", "checkpoints")
    shutil.copy(abc / "abc.txt", "abc.txt")
    return Path("checkpoints/abc")


def sample(*args: str) -> tuple[list[str], str]:
    result = cli("sample", "checkpoints/abc", "--seed", "7", "--precision", "fp32", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.split("\n")[:-1], result.stderr


def test_items_are_shuffled_then_split_whole_and_remembered(tmp_path):
    names = [f"{a}{b}{c}" for a in "pqrs" for b in "aeiou" for c in "lmnt"]  # 80 distinct, written sorted
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    train(tmp_path / "names.txt", "n", "--items", "--max-steps", "2", "--val-frac", "0.25")
    mem, vocab = memory("n")
    assert len(mem.train) == 60 and len(mem.held_out) == 20  # every item, each on one side
    assert set(mem.train.tolist()).isdisjoint(mem.held_out.tolist())
    assert set(mem.train.tolist()) | set(mem.held_out.tolist()) == hashes(names, vocab)
    tail = hashes(names[-20:], vocab)  # held out: a random sample of the list, not its alphabetical tail
    assert len(tail & set(mem.held_out.tolist())) < 12
    rows = [json.loads(r) for r in Path("checkpoints/n/metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows)
    assert "items        80 (20 held out), separated by \\n; remembered in items.safetensors" in cli(
        "info", "checkpoints/n").stdout


def test_a_file_with_one_item_is_refused_and_empty_lines_and_crlf_are_no_items(tmp_path):
    (tmp_path / "one.txt").write_text("\n\nonly\n\n", encoding="utf-8")
    result = cli("train", tmp_path / "one.txt", *FAST, "--items")
    assert result.exit_code == 1 and "has 1 item between '\\n' separators" in result.stderr
    assert not Path("checkpoints/one").exists()
    words = [f"w{i:03d}" for i in range(200)]
    (tmp_path / "crlf.txt").write_bytes(("\r\n\r\n".join(words) + "\r\n").encode())  # blank CRLF lines between
    train(tmp_path / "crlf.txt", "crlf", "--items", "--max-steps", "2")
    mem, vocab = memory("crlf")
    assert set(mem.train.tolist()) | set(mem.held_out.tolist()) == hashes(words, vocab)  # 200 items, no "\r"


def test_an_item_longer_than_the_window_and_a_blank_line_separator(tmp_path):
    recipes = [f"recipe {i}\n" + "stir and bake " * 5 + f"{i}" for i in range(40)]  # 2 lines, > --seq-len 8 each
    (tmp_path / "r.txt").write_text("\n\n".join(recipes) + "\n", encoding="utf-8")
    train(tmp_path / "r.txt", "r", "--item-separator", "\\n\\n", "--max-steps", "2")
    mem, vocab = memory("r")
    assert mem.separator == "\n\n" and len(mem.train) + len(mem.held_out) == 40
    assert set(mem.train.tolist()) | set(mem.held_out.tolist()) == hashes(recipes, vocab)
    out = cli("sample", "checkpoints/r", "--items", "3", "--seed", "1", "--length", "60")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.endswith("\n\n") and len(out.stdout.split("\n\n")) == 4  # each item ended by a blank line


def test_sampled_items_end_at_the_separator_and_are_marked_as_the_file_says(run):
    lines, err = sample("--items", "200", "--mark")
    assert len(lines) == 200 and all(re.fullmatch(r"(new|train|held-out)\t[abc]+", line) for line in lines)
    marks = dict(line.split("\t")[::-1] for line in lines)
    assert {m for m in marks.values()} == {"new", "train", "held-out"}  # the run copies, holds out, and invents
    for item, mark in marks.items():
        assert (mark == "new") == (item not in ABC)  # checked against the list itself
    held = {i for i, m in marks.items() if m == "held-out"}
    assert len(held) <= 3
    mem, vocab = memory("abc")
    assert hashes(sorted(held), vocab) <= set(mem.held_out.tolist())
    counts = {m: sum(v == m for v in [line.split("\t")[0] for line in lines]) for m in ("new", "train", "held-out")}
    assert re.search(rf"drew \d+ items, wrote 200; {counts['new']} new, {counts['train']} cop(y|ies) of training "
                     rf"items, {counts['held-out']} of held-out items", err)


def test_new_only_writes_only_items_the_list_lacks_and_unique_writes_each_once(run):
    lines, err = sample("--items", "10", "--new-only")
    assert len(lines) == 10 and not set(lines) & set(ABC)
    assert re.search(r"drew (\d+) items, wrote 10; 10 new, \d+ cop(y|ies) of training items", err)
    lines, _ = sample("--items", "12", "--unique")
    assert len(lines) == 12 and len(set(lines)) == 12
    lines, err = sample("--items", "40", "--new-only", "--unique", "--max-draws", "50")
    assert len(lines) < 40 and "gave up after drawing 50 items (--max-draws)" in err
    assert not set(lines) & set(ABC) and len(set(lines)) == len(lines)


def test_several_temperatures_equal_single_temperature_runs(run):
    together, _ = sample("--items", "15", "--temp", "0.5,1.2", "--headers")
    assert together[0] == "== temperature 0.5 ==" and together[16] == "== temperature 1.2 =="
    assert together[1:16] == sample("--items", "15", "--temp", "0.5")[0]
    assert together[17:] == sample("--items", "15", "--temp", "1.2")[0]
    plain = cli("sample", "checkpoints/abc", "-n", "30", "--seed", "3", "--temp", "0.7,1.0")
    one = [cli("sample", "checkpoints/abc", "-n", "30", "--seed", "3", "--temp", t).stdout for t in ("0.7", "1.0")]
    assert plain.exit_code == 0 and plain.stdout == one[0] + "\n\n" + one[1]


def test_a_prompt_per_line_is_continued_in_the_files_order(run, tmp_path):
    prompts = ["a", "bc", "", "cab", "b"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = cli("sample", "checkpoints/abc", "--prime-file", tmp_path / "p.txt", "--each-line", "-n", "6",
              "--temp", "0", "--precision", "fp32")
    assert out.exit_code == 0, out.stderr
    blocks = out.stdout.split("\n\n")
    assert len(blocks) == 5
    for prompt, block in zip(prompts, blocks, strict=True):  # argmax: each row as if sampled alone
        alone = cli("sample", "checkpoints/abc", "--prime", prompt, "-n", "6", "--temp", "0", "--precision", "fp32")
        assert block == alone.stdout
    piped = cli("sample", "checkpoints/abc", "--prime", "-", "--each-line", "-n", "6", "--temp", "0",
                "--precision", "fp32", input="a\nbc\n\ncab\nb\n")
    assert piped.stdout == out.stdout


def test_resume_in_items_mode_is_bit_identical(tmp_path):
    (tmp_path / "abc.txt").write_text("\n".join(ABC * 3) + "\n", encoding="utf-8")
    train(tmp_path / "abc.txt", "whole", "--items", "--max-steps", "16", "--eval-every", "4")
    train(tmp_path / "abc.txt", "cut", "--items", "--max-steps", "7", "--decay-steps", "16", "--eval-every", "4")
    result = train(tmp_path / "abc.txt", "cut", "--max-steps", "16", "--resume")
    assert "resuming checkpoints/cut at step 7" in result.stderr
    a = files.load(Path("checkpoints/whole/last.safetensors"))[0]
    b = files.load(Path("checkpoints/cut/last.safetensors"))[0]
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_score_items_ranks_a_list_likeliest_first(run):
    out = cli("score", "abc.txt", "-c", "checkpoints/abc", "--items", "--precision", "fp32")
    assert out.exit_code == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert sorted(r[1] for r in rows) == sorted(ABC)
    bits = [float(r[0]) for r in rows]
    assert bits == sorted(bits) and bits[0] < bits[-1]
    js = [json.loads(line) for line in cli("score", "abc.txt", "-c", "checkpoints/abc", "--items", "--json",
                                          "--precision", "fp32").stdout.splitlines()]
    assert [j["item"] for j in js] == [r[1] for r in rows] and js[0]["scored"] == len(js[0]["item"]) + 1


@pytest.mark.parametrize("args,message", [
    (["--new-only"], "--new-only applies to items; add --items N"),
    (["--items", "5", "--prime", "ab"], "--items begins every item after the separator"),
    (["--items", "5", "--length", "0"], "--items needs a --length"),
    (["--items", "5", "--num-samples", "3"], "leave out --num-samples"),
    (["--items", "5", "--stop", "x"], "leave out --stop"),
    (["--temp", "0.5,x"], "--temp must be a number, or numbers separated by commas"),
    (["--temp", "0.5,-1"], "--temp must be a finite number >= 0, not -1.0"),
    (["--each-line"], "--each-line continues each line of --prime-file PATH"),
])
def test_item_flags_are_checked(run, args, message):
    result = cli("sample", "checkpoints/abc", *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_items_from_a_run_without_items_need_a_separator(origin):
    shutil.copytree(origin / "checkpoints", "checkpoints")
    result = cli("sample", "checkpoints/tiny", "--items", "3")
    assert result.exit_code == 2 and "was not trained with --items; give --item-separator" in result.stderr
    result = cli("sample", "checkpoints/tiny", "--items", "3", "--new-only", "--item-separator", "\\n")
    assert result.exit_code == 2 and "--new-only needs the run's item memory" in result.stderr
    result = cli("sample", "checkpoints/tiny", "--items", "3", "--item-separator", "\\n", "--length", "50")
    assert result.exit_code == 0 and len(result.stdout.split("\n")) == 4


def test_python_names_is_a_list_from_this_interpreter():
    result = cli("corpus", "get", "python-names")
    assert result.exit_code == 0, result.stderr
    names = Path("corpora/python-names.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) > 1000 and names == sorted(set(names)) and {"os", "OrderedDict", "urlopen"} <= set(names)


@pytest.mark.big
def test_the_memory_of_a_million_items_stays_within_tens_of_mb(tmp_path):
    (tmp_path / "m.txt").write_text("".join(f"i{n:07d}\n" for n in range(1_000_000)), encoding="utf-8")
    train(tmp_path / "m.txt", "m", "--items", "--max-steps", "1", "--val-chars", "2000")
    size = Path("checkpoints/m/items.safetensors").stat().st_size
    assert 8_000_000 <= size < 8_100_000  # 8 bytes an item
    mem, _ = memory("m")
    assert len(mem.train) + len(mem.held_out) == 1_000_000


def test_a_forced_resume_onto_an_edited_list_remembers_its_new_items(tmp_path):
    words = [f"w{i:03d}" for i in range(200)]
    (tmp_path / "l.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    train(tmp_path / "l.txt", "l", "--items", "--max-steps", "4", "--decay-steps", "8", "--eval-every", "4")
    edited = [f"w{i:03d}" for i in range(500, 700)]  # the same characters: other items
    (tmp_path / "l.txt").write_text("\n".join(edited) + "\n", encoding="utf-8")
    train(tmp_path / "l.txt", "l", "--max-steps", "8", "--resume", "--force")
    mem, vocab = memory("l")
    assert set(mem.train.tolist()) | set(mem.held_out.tolist()) == hashes(edited, vocab)


def test_a_run_that_fails_before_saving_leaves_no_directory(tmp_path, monkeypatch):
    from conftest import nan_losses

    from charrnn.training.trainer import Trainer

    (tmp_path / "l.txt").write_text("\n".join(ABC * 4) + "\n", encoding="utf-8")
    monkeypatch.setattr(Trainer, "step", nan_losses(lambda step: True))
    result = cli("train", tmp_path / "l.txt", *FAST, "--items", "--run", "bad", "--max-steps", "20")
    assert result.exit_code == 1 and not Path("checkpoints/bad").exists()


def test_length_caps_an_items_own_characters(run):
    lines, err = sample("--items", "30", "--length", "3", "--max-draws", "3000")
    lengths = {len(line) for line in lines}
    assert len(lines) == 30 and max(lengths) == 3  # an item of exactly --length characters is written
