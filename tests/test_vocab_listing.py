"""charrnn info shows a vocabulary's characters as themselves (controls and whitespace escaped), and --vocab lists
all of it, one character a line."""

from __future__ import annotations

from pathlib import Path

from conftest import cli, make_text, train_tiny

CJK = "。こんにちは世界日本語の文字です"
ODD = "\t\x85\\\u3000\x1b"  # a tab, NEL, a backslash, an ideographic space, ESC
WIDE = "".join(chr(0x4E00 + i) for i in range(70))  # more than the 60 `info` shows


def train_on(text: str) -> Path:
    path = Path("c.txt")
    path.write_text(text, encoding="utf-8")
    train_tiny(path)
    return Path("checkpoints") / "c"


def vocabulary_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("vocabulary"))


def test_info_shows_printable_characters_as_themselves_and_escapes_only_controls_and_whitespace():
    run = train_on(make_text(3000, alphabet="ab \n") + CJK + ODD)
    out = cli("info", run)
    assert out.exit_code == 0, out.stderr
    line = vocabulary_line(out.stdout)
    assert "\\u" + "3002" not in line and all(c in line for c in CJK)
    assert "\\n" in line and "\\t" in line and "\\x85" in line and "\\u3000" in line and "\\\\" in line
    assert " ..." not in line and "\t" not in line and "\x85" not in line and "\x1b" not in out.stdout


def test_info_vocab_lists_every_character_one_a_line():
    text = make_text(3000, alphabet="ab \n") + CJK + ODD + WIDE
    run = train_on(text)
    assert "... (all: --vocab)" in vocabulary_line(cli("info", run).stdout)
    out = cli("info", run, "--vocab")
    assert out.exit_code == 0 and out.stderr == ""
    rows = [line.split("\t") for line in out.stdout.split("\n")[:-1]]
    assert [int(i) for i, _ in rows] == list(range(len(set(text))))
    escapes = {"\\n": "\n", "\\t": "\t", "\\x85": "\x85", "\\u3000": "\u3000", "\\\\": "\\", "\\x1b": "\x1b"}
    chars = [escapes.get(c, c) for _, c in rows]
    assert sorted(chars) == sorted(set(text)) and all(len(c) == 1 for c in chars)
    assert " " in chars and "世" in chars  # the space and CJK as themselves
    assert cli("info", "-c", run, "--vocab").stdout == out.stdout
