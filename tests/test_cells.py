"""`charrnn cells`: recorded unit values, the --find signals and ranking, terminal, plain and HTML output, errors."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

from charrnn.analysis import signals
from charrnn.analysis import units as cells
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.model import files as checkpoint
from charrnn.model.files import load_model
from charrnn.model.rnn import CharRNN
from charrnn.model.steps import FusedStep

TOKENS = ["if", "x", "=", '"ab c"', "'d'", "(", ")", "[", "]", "{", "}", "# note", "// c", "/* b */", "<", ">", "&",
          ";", "alert", "script", "1", "\t", "yz", "mo", "ue", "<!-- -->", "\\"]
SMALL = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
         "--max-steps", "4", "--eval-every", "2"]


def code_text(n: int, seed: int = 0) -> str:
    """Code-like lines: indentation, quotes, comments, brackets and the characters of <script>alert(1)</script>."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n:
        line = " " * rng.choice([0, 0, 2, 4]) + " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 8))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:n]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints trained once per module on code_text: a 2-layer LSTM and a 1-layer GRU; and the text."""
    root = tmp_path_factory.mktemp("cells")
    text = root / "code.txt"
    text.write_text(code_text(6000), encoding="utf-8")
    paths = {"text": text}
    for cell, layers in (("lstm", "2"), ("gru", "1")):
        result = cli("train", text, *SMALL, "--cell", cell, "--num-layers", layers, "--run", cell,
                     "--out", root / "checkpoints")
        assert result.exit_code == 0, result.stderr
        paths[cell] = root / "checkpoints" / cell / "best.safetensors"
    return paths


@pytest.fixture(autouse=True)
def no_forced_colour(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- recording: exactly the fused step, block after block ----------------------------------------------------

VOCAB = Vocab(list("abcdefghij \n.,;:!?XYZ"))


def hand_model(cell: str, layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    m = CharRNN(ModelConfig(cell=cell, vocab_size=len(VOCAB), embed_size=12, hidden_size=24, num_layers=layers))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # saturated gates and peaked outputs, where mistakes show
    return m.eval()


@pytest.mark.parametrize("cell, layers", [(c, n) for c in ("lstm", "gru", "rnn") for n in (1, 2)])
def test_recorded_values_are_what_the_fused_step_computes(cell, layers):
    m = hand_model(cell, layers, seed=layers)
    ids = np.random.default_rng(0).integers(len(VOCAB), size=45).astype(np.uint8)  # (N,)
    blocks = list(cells.record(m, ids, torch.device("cpu"), chunk=7))  # 7 blocks: the state crosses 6 boundaries
    assert [len(b.hidden) for b in blocks] == [7] * 6 + [3]
    hidden = np.concatenate([b.hidden for b in blocks])  # (N, layers H)
    logits = torch.cat([b.logits for b in blocks])  # (N, V)
    step = FusedStep(m, m.init_state(1))
    state = m.init_state(1)
    for t, i in enumerate(ids.tolist()):
        out = step(torch.tensor([i]))
        assert torch.equal(logits[t], out[0])
        assert np.array_equal(hidden[t], torch.cat(step.h, 1)[0].numpy())
        if cell == "lstm":
            c = np.concatenate([b.cell for b in blocks])[t]
            assert np.array_equal(c, torch.tanh(torch.cat(step.c, 1))[0].numpy())
        with torch.no_grad():  # the model's own modules agree to rounding
            module_logits, state = m(torch.tensor([[i]]), state)
        torch.testing.assert_close(logits[t], module_logits[0, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(hidden[t]), state[0][:, 0].reshape(-1), rtol=1e-5, atol=1e-5)
        if cell == "lstm":
            torch.testing.assert_close(torch.from_numpy(c), torch.tanh(state[1][:, 0]).reshape(-1), rtol=1e-5,
                                       atol=1e-5)
    assert (blocks[0].cell is None) == (cell != "lstm")


def test_the_cli_values_are_the_recording_across_blocks(models, monkeypatch):
    text = code_text(300, seed=5)
    write(Path("t.txt"), text)
    monkeypatch.setattr(cells, "CHUNK", 13)  # many blocks
    out = cli("cells", "t.txt", "-c", models["lstm"], "--unit", "1:3", "--unit", "0:15", "--state", "hidden")
    assert out.exit_code == 0, out.stderr
    model, vocab, _ = load_model(models["lstm"], torch.device("cpu"))
    whole = next(cells.record(model, vocab.encode(text), torch.device("cpu"), chunk=1000)).hidden  # (N, 2H), one block
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [float(r[1]) for r in rows] == [float(f"{v:.6f}") for v in whole[:, 16 + 3]]
    assert [float(r[2]) for r in rows] == [float(f"{v:.6f}") for v in whole[:, 15]]


# --- signals ----------------------------------------------------------------------------------------------


def digits(s: str) -> list[float]:
    return [float(c) for c in s]


@pytest.mark.parametrize("text, expected", [
    ('x="ab" y\n', "001110000"),  # the opening quote is inside, the closing one not
    ("a'b'c", "01100"),
    ('"a\\"b" c', "11111000"),  # \" does not close
    ("don't\nx'", "00000000"),  # no closing quote on the same line: nothing opens
    ("'a\n'", "0000"),
    ('"a\'b" \'"\'', "111100110"),  # the other kind of quote inside a span is text
])
def test_quote(text, expected):
    assert signals.quote(text).tolist() == digits(expected)


@pytest.mark.parametrize("text, expected", [
    ("a # b\nc", "0011100"),  # the newline ends the comment and is outside it
    ("x // y\n", "0011110"),
    ("a /* b\n */ c", "001111111000"),  # the block's final / is outside
    ('s = "#1" # c', "000000000111"),  # a # in a string starts nothing
    ("/* open", "1111111"),
    ("/*/ x */", "11111110"),
])
def test_comment(text, expected):
    assert signals.comment(text).tolist() == digits(expected)


def test_line_position_indent_brackets_and_regex():
    assert signals.line_position("ab\ncd\n\ne").tolist() == [1, 2, 0, 1, 2, 0, 0, 1]
    assert signals.indent("  a\n\tb c\nd\n   ").tolist() == [1, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 1, 2, 3]
    assert signals.brackets("f(a[b]{c})) (").tolist() == [0, 1, 1, 2, 2, 1, 2, 2, 1, 0, 0, 0, 1]
    assert signals.parse("regex:b+")("abbcb").tolist() == [0, 1, 1, 0, 1]
    assert signals.parse("regex:x*")("ab").tolist() == [0, 0]  # empty matches mark nothing
    assert signals.parse("line-position") is signals.line_position
    for signal in signals.SIGNALS.values():
        assert signal("").tolist() == []


def test_correlation_is_pearsons_and_zero_for_constants():
    rng = np.random.default_rng(1)
    y = rng.normal(size=100)
    x = np.stack([y + rng.normal(size=100), -y, np.full(100, 0.3), rng.normal(size=100)], 1).astype(np.float32)
    c = cells.Correlation(y)
    for start in range(0, 100, 17):  # fed in blocks
        c.add(x[start : start + 17])
    r = c.result()
    expected = [np.corrcoef(x[:, k].astype(np.float64), y)[0, 1] for k in (0, 1, 3)]
    np.testing.assert_allclose(r[[0, 1, 3]], expected, rtol=1e-9)
    assert r[2] == 0.0 and r[1] == pytest.approx(-1.0)
    flat = cells.Correlation(np.ones(100))
    flat.add(x)
    assert flat.result().tolist() == [0.0] * 4


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho straight from its definition: Pearson's r of the two mean-rank vectors."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_rank_correlation_is_spearmans_over_values_a_colour_tells_apart():
    rng = np.random.default_rng(2)
    depth = rng.integers(0, 12, size=3000).astype(np.float64)  # a count, as indent or bracket depth
    x = np.stack([np.tanh(0.6 * (depth - 5)),  # follows the count, flattening towards -1 and +1
                  -np.tanh(0.1 * depth + rng.normal(scale=0.2, size=3000)),
                  rng.uniform(-1, 1, 3000),
                  np.full(3000, 0.25),
                  -0.9999 + 1e-5 * depth], 1).astype(np.float32)  # (N, U); the last moves by less than a bin
    c = cells.RankCorrelation(depth)
    for start in range(0, 3000, 700):  # fed in blocks
        c.add(x[start : start + 700])
    rho = c.result()
    np.testing.assert_allclose(rho[:3], [spearman(x[:, k], depth) for k in range(3)], atol=2e-3)
    assert rho[0] == pytest.approx(1.0) and np.corrcoef(x[:, 0], depth)[0, 1] < 0.97  # Pearson's r reads less
    assert rho[3] == 0.0 and rho[4] == 0.0  # constant, and as good as constant: one bin
    assert spearman(x[:, 4], depth) > 0.99  # exact ranks would call it a perfect unit
    flat = cells.RankCorrelation(np.ones(50))
    flat.add(x[:50])
    assert flat.result().tolist() == [0.0] * 5


# --- --find -----------------------------------------------------------------------------------------------

QUOTES = "".join(f'ab "{"cd " * (i % 4)}e" x "y{"z" * (i % 3)}" if\n' for i in range(60))


def plant_quote_unit(source: Path, target: Path, k: int) -> Path:
    """source's LSTM with layer 0's unit k set by hand to flip at every " (and do nothing else): its cell is
    about +1 inside a "..." span and -1 outside. Saved as a real checkpoint, the checksum recomputed."""
    tensors, meta = checkpoint.load(source)
    tensors = {name: t.clone() for name, t in tensors.items()}
    meta.pop("format")
    H, quote = meta["model"]["hidden_size"], meta["vocab"].index('"')
    emb, w_ih, b_ih = (tensors[f"model.{name}"] for name in ("embed.weight", "rnn.weight_ih_l0", "rnn.bias_ih_l0"))
    w_hh, b_hh = tensors["model.rnn.weight_hh_l0"], tensors["model.rnn.bias_hh_l0"]
    emb[:, 0] = 0
    emb[quote, 0] = 1  # input feature 0: "is this a quote"
    i, f, g, o = k, H + k, 2 * H + k, 3 * H + k  # PyTorch's gate rows: i, f, g, o
    for row in (i, f, g, o):
        w_ih[row], w_hh[row], b_hh[row] = 0, 0, 0
    w_hh[:, k] = 0  # no other unit sees it: not in its layer, not in the next
    tensors["model.rnn.weight_ih_l1"][:, k] = 0
    w_ih[i, 0], b_ih[i] = 30, -15  # write only at a quote
    w_ih[f, 0], b_ih[f] = -30, 15  # forget only at a quote
    w_hh[g, k], b_ih[g] = -10, 3  # write the opposite of what the unit holds (+1 from 0)
    b_ih[o] = 15  # h = tanh(c)
    checkpoint.save(target, tensors, meta)
    return target


def test_find_recovers_a_planted_quote_unit(models):
    planted = plant_quote_unit(models["lstm"], Path("planted.safetensors"), k=5)
    write(Path("q.txt"), QUOTES)
    out = cli("cells", "q.txt", "-c", planted, "--find", "quote", "--top", "4", "--max-chars", "0")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["unit", "state", "spearman", "pearson"] and len(lines) == 5  # the table alone
    rows = [line.split() for line in lines[1:]]
    assert {tuple(r[:2]) for r in rows[:2]} == {("0:5", "cell"), ("0:5", "hidden")}  # both of its states lead
    assert all(float(r[2]) > 0.95 for r in rows[:2]) and all(abs(float(r[2])) < 0.9 for r in rows[2:])
    assert abs(float(rows[0][2])) >= abs(float(rows[1][2])) >= abs(float(rows[2][2]))
    assert all(float(r[3]) > 0.95 for r in rows[:2])  # Pearson's r agrees
    # the unmodified model has no such unit
    plain = cli("cells", "q.txt", "-c", models["lstm"], "--find", "quote", "--top", "1", "--max-chars", "0")
    assert plain.exit_code == 0 and abs(float(plain.stdout.splitlines()[1].split()[2])) < 0.95


def test_find_renders_the_best_unit_and_max_chars_bounds_only_the_rendering(models):
    planted = plant_quote_unit(models["lstm"], Path("planted.safetensors"), k=9)
    write(Path("q.txt"), QUOTES)
    table = cli("cells", "q.txt", "-c", planted, "--find", "quote", "--max-chars", "0").stdout
    out = cli("cells", "q.txt", "-c", planted, "--find", "quote", "--max-chars", "40")
    assert out.exit_code == 0, out.stderr
    assert out.stderr == table  # the whole text's table, on stderr: stdout has the text
    lines = out.stdout.splitlines()
    assert len(lines) == 40
    best = [float(line.split("\t")[1]) for line in lines]
    inside = signals.quote(QUOTES)[:40]
    assert all((v > 0.5) == bool(q) for v, q in zip(best, inside, strict=True))  # the planted unit, shown
    assert table.splitlines()[1].split()[0] == "0:9"


def test_find_with_unit_shows_that_units_own_correlation(models):
    write(Path("t.txt"), code_text(800, seed=5))
    full = cli("cells", "t.txt", "-c", models["lstm"], "--find", "indent", "--top", "64", "--max-chars", "0")
    assert full.exit_code == 0, full.stderr
    rows = [line.split() for line in full.stdout.splitlines()[1:]]
    assert len(rows) == 64  # 2 layers of 16 units, cell and hidden
    place, low = next((i, r) for i, r in reversed(list(enumerate(rows))) if r[1] == "cell")  # far down the ranking
    out = cli("cells", "t.txt", "-c", models["lstm"], "--find", "indent", "--top", "2", "--unit", low[0],
              "--unit", rows[0][0] if rows[0][1] == "cell" else rows[1][0], "--max-chars", "0")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:4] for line in lines[1:3]] == rows[:2]  # the ranking's top, as before
    assert len(lines) == 4  # then the --unit unit not among them; the one that is, not again
    assert lines[3].split()[:4] == low and lines[3].endswith(f"(ranked {place + 1} of 64)")
    shown = cli("cells", "t.txt", "-c", models["lstm"], "--find", "indent", "--top", "1", "--unit", low[0],
                "--max-chars", "3")
    assert shown.exit_code == 0 and shown.stderr.splitlines()[2].split()[:4] == low  # the table on stderr
    assert len(shown.stdout.splitlines()) == 3  # the text, in that unit's values


@pytest.mark.parametrize("find", ["comment", "regex:zz+", "quote", "indent", "brackets"])
def test_a_signal_that_never_changes_on_the_text_is_a_usage_error(models, find):
    write(Path("t.txt"), "if x = 1\nab cd\n")  # no comment, quote, indent or bracket
    usage_error(cli("cells", "t.txt", "-c", models["lstm"], "--find", find, "--max-chars", "0"),
                f"--find {find} never changes on t.txt (it is 0 at every character)", "another signal")


def test_a_signal_that_never_changes_on_stdin_is_a_usage_error(models):
    usage_error(cli("cells", "-", "-c", models["gru"], "--find", "line-position", input="a"), "--find line-position",
                "never changes", "give a text where it changes, or another signal")


# --- output -----------------------------------------------------------------------------------------------


def test_values_are_one_line_per_character(models):
    text = 'a\tb\n  "x" # c\n\\'
    write(Path("t.txt"), text + "\n")
    out = cli("cells", "t.txt", "-c", models["gru"], "--unit", "0:2", "--values")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(text) + 1
    chars = [line.split("\t")[0] for line in lines[:-1]]
    assert chars == ["a", "\\t", "b", "\\n", " ", " ", '"', "x", '"', " ", "#", " ", "c", "\\n", "\\\\", "\\n"]
    assert all(-1 <= float(line.split("\t")[1]) <= 1 for line in lines[:-1])
    assert out.stderr == ""


def test_stdin_and_characters_outside_the_vocabulary(models):
    out = cli("cells", "-", "-c", models["gru"], "--unit", "0:0", input="ab\u00e9c")
    assert out.exit_code == 0, out.stderr
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == ["a", "b", "c"]
    assert "outside the model's vocabulary" in out.stderr and "\u00e9" in out.stderr


BG = re.compile(r"\x1b\[48;2;(\d+);(\d+);(\d+);38;2;\d+;\d+;\d+m")


def test_a_terminal_gets_24_bit_backgrounds(models, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    text = 'if x = "ab c"\n  y\n'
    write(Path("t.txt"), text)
    out = cli("cells", "t.txt", "-c", models["lstm"], "--unit", "0:1", "--unit", "1:2")
    assert out.exit_code == 0, out.stderr
    blocks = out.stdout.split("\x1b[1m")[1:]
    assert len(blocks) == 2 and blocks[0].startswith("layer 0, unit 1 (0:1), cell state")
    for block in blocks:
        body = block.split("\n", 1)[1]
        assert len(BG.findall(body)) == len(text.replace("\n", ""))  # one colour per character
        assert BG.sub("", body).replace("\x1b[0m", "") == text  # the text itself, newlines kept
    assert "\t" not in out.stdout
    values = cli("cells", "t.txt", "-c", models["lstm"], "--unit", "0:1", "--values")
    assert "\x1b" not in values.stdout and len(values.stdout.splitlines()) == len(text)


def test_a_real_terminal_gets_colour_and_a_pipe_does_not(models):
    write(Path("t.txt"), "if (x)\n")
    args = [sys.executable, "-m", "charrnn", "cells", "t.txt", "-c", str(models["lstm"]), "--unit", "0:0"]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["OMP_NUM_THREADS"] = "1"
    main, child = pty.openpty()
    proc = subprocess.Popen(args, stdout=child, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(child)
    got = b""
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        try:
            data = os.read(main, 65536) if ready else b""
        except OSError:  # the child end closed: Linux says EIO
            data = b""
        if not data:
            break
        got += data
    os.close(main)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert len(BG.findall(got.decode())) == 6
    piped = subprocess.run(args, capture_output=True, env=env, timeout=300)
    assert piped.returncode == 0 and b"\x1b" not in piped.stdout and len(piped.stdout.splitlines()) == 7


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.styles, self.blocks, self.scripts = [], [], [], []
        self.script, self.in_block, self.in_span = None, False, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "div" and a.get("class") == "text":
            self.blocks.append("")
            self.in_block = True
        if tag == "span" and "style" in a:
            self.styles.append(a["style"])
            self.in_span = self.in_block
        if tag == "script":
            self.script = ""

    def handle_endtag(self, tag):
        self.in_span = self.in_span and tag != "span"
        self.in_block = self.in_block and tag != "div"
        if tag == "script":
            self.scripts.append(self.script)
            self.script = None

    def handle_data(self, data):
        if self.script is not None:
            self.script += data
        elif self.in_span:
            self.blocks[-1] += data
        else:
            assert not self.in_block or not data.strip(), data  # every character of a block is in a span


def test_the_html_page_stands_alone_and_escapes_the_text(models):
    text = 'x = "<script>alert(1)</script>" & y\n</script><!-- #\n'
    write(Path("t.txt"), text)
    out = cli("cells", "t.txt", "-c", models["lstm"], "--unit", "0:3", "--unit", "1:7", "--html", "page.html")
    assert out.exit_code == 0, out.stderr
    assert out.stdout == "" and out.stderr == "wrote page.html\n"
    page = Path("page.html").read_text(encoding="utf-8")
    parsed = Page()
    parsed.feed(page)
    assert parsed.blocks == [text, text]  # every character in its own span, escaped, nothing lost or injected
    assert len(parsed.styles) == 2 * len(text) and all(s.startswith("background:rgb(") for s in parsed.styles)
    assert len(parsed.scripts) == 2 and parsed.tags.count("script") == 2  # the data and the hover script only
    data = json.loads(parsed.scripts[0])
    assert "".join(data["text"]) == text and len(data["top"]) == len(text)
    assert [u["name"] for u in data["units"]] == ["0:3", "1:7"] and len(data["units"][0]["values"]) == len(text)
    assert all(len(row) == 5 and 0 <= row[-1][1] <= row[0][1] <= 1 for row in data["top"])
    for remote in ("http://", "https://", "src=", "url(", "@import", "<link"):
        assert remote not in page
    assert "</script>\"" not in page and "<script>alert" not in page
    body = page[page.index('<div class="text"') : page.index("<script")]  # the two blocks
    assert re.sub(r"</?(span|div|h2)[ >]", "", body).count("<") == 0  # no < of the text left raw
    assert body.count("&lt;") == 2 * text.count("<") and body.count("&amp;") == 2 * text.count("&")


def test_find_with_html_puts_the_table_on_stdout(models):
    write(Path("t.txt"), code_text(500, seed=3))
    out = cli("cells", "t.txt", "-c", models["lstm"], "--find", "indent", "--top", "3", "--html", "p.html")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["unit", "state", "spearman", "pearson"] and len(lines) == 4
    best = lines[1].split()
    assert f"layer {best[0].split(':')[0]}, unit {best[0].split(':')[1]} ({best[0]}), {best[1]} state" in (
        Path("p.html").read_text(encoding="utf-8"))  # the page shows the best unit


# --- usage errors -----------------------------------------------------------------------------------------


def usage_error(result, *fragments: str) -> None:
    """Exit 2, nothing on stdout, one `error:` line holding every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("args, fragments", [
    (["--unit", "2:0"], ["--unit 2:0", "layers are 0 to 1"]),
    (["--unit", "0:16"], ["--unit 0:16", "units are 0 to 15"]),
    (["--unit", "0:3", "--unit", "1:99"], ["--unit 1:99", "0 to 15"]),
    (["--unit", "x"], ["--unit 'x'", "LAYER:INDEX"]),
    (["--unit", "0-3"], ["--unit '0-3'", "LAYER:INDEX"]),
    (["--unit", "-1:2"], ["--unit '-1:2'"]),
    (["--find", "quotes"], ["--find 'quotes'", "unknown predicate", "quote, comment, line-position, indent, "
                                                                    "brackets, regex:PATTERN"]),
    (["--find", "regex:(a"], ["--find 'regex:(a'", "bad regular expression", "missing )"]),
    (["--find", "regex:"], ["regex: needs a pattern"]),
    (["--unit", "0:0", "--state", "both"], ["--state must be one of cell, hidden", "not 'both'"]),
    ([], ["--unit LAYER:INDEX", "--find"]),
    (["--find", "quote", "--top", "0"], ["--top must be at least 1, not 0"]),
    (["--find", "quote", "--max-chars", "-1"], ["--max-chars must be >= 0", "not -1"]),
    (["--unit", "0:0", "--html", "no/such/dir/p.html"], ["--html", "no/such/dir"]),
    (["--unit", "0:0", "--html", "p.html", "--max-chars", "0"], ["--html p.html with --max-chars 0"]),
    (["--find", "regex:a{4294967296}"], ["--find regex", "repeat count is too large"]),
    (["--find", "regex:" + "(" * 2000 + ")" * 2000], ["--find regex", "nests too deeply"]),
])
def test_bad_options_are_one_line_usage_errors(models, args, fragments):
    write(Path("t.txt"), "if x\n")
    usage_error(cli("cells", "t.txt", "-c", models["lstm"], *args), *fragments)


def test_a_bad_top_or_max_chars_names_only_itself(models):
    write(Path("t.txt"), "if x\n")
    top = cli("cells", "t.txt", "-c", models["lstm"], "--find", "quote", "--top", "0")
    usage_error(top, "--top must be at least 1, not 0")
    assert "--max-chars" not in top.stderr and "None" not in top.stderr
    max_chars = cli("cells", "t.txt", "-c", models["lstm"], "--find", "quote", "--top", "3", "--max-chars", "-2")
    usage_error(max_chars, "--max-chars must be >= 0")
    assert "--top" not in max_chars.stderr and "None" not in max_chars.stderr


def test_cell_state_of_a_gru_is_a_usage_error(models):
    write(Path("t.txt"), "if x\n")
    usage_error(cli("cells", "t.txt", "-c", models["gru"], "--unit", "0:1", "--state", "cell"),
                "--state cell", "gru", "hidden")
    usage_error(cli("cells", "t.txt", "-c", models["gru"], "--find", "quote", "--state", "cell"), "--state cell")
    write(Path("t.txt"), 'if "x"\n')
    ok = cli("cells", "t.txt", "-c", models["gru"], "--find", "quote", "--max-chars", "0")
    assert ok.exit_code == 0 and {line.split()[1] for line in ok.stdout.splitlines()[1:]} == {"hidden"}
