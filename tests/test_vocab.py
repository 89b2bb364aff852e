"""Vocab: sorted Unicode code points <-> ids, JSON round trip, id dtypes, unknown characters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError
from charrnn.model import filecheck

CJK_EMOJI = "日本語のテキスト 中文字符 한국어 😀🎉🐍🦀 \U0001f680\U00020000 naïve café\n"


def of_text(text: str) -> Vocab:
    """The vocab of a text, as corpus preparation makes it: the set of its characters."""
    return Vocab(list(set(text)))


def non_surrogates(start: int, count: int) -> list[str]:
    """count distinct encodable characters from code point start up (surrogates cannot be UTF-32 encoded)."""
    out, cp = [], start
    while len(out) < count:
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
        cp += 1
    return out


def test_from_text_is_the_sorted_set_of_code_points():
    v = of_text("banana 🍌 bandana")
    assert v.chars == sorted(set("banana 🍌 bandana"))
    assert v.chars == [" ", "a", "b", "d", "n", "🍌"]
    assert len(v) == 6
    assert all(len(c) == 1 for c in v.chars)  # code points, never bytes or surrogate halves


@pytest.mark.parametrize("text", ["hello world\n", CJK_EMOJI, "a", "\r\n\t \x7f", "🐍" * 50 + "x"])
def test_encode_decode_round_trip(text):
    v = of_text(text)
    ids = v.encode(text)
    assert ids.shape == (len(text),)  # one id per character, not per UTF-8 byte
    assert v.decode(ids) == text
    assert v.decode(ids.tolist()) == text


def test_astral_plane_characters_are_single_ids():
    text = "😀a🎉"
    v = of_text(text)
    ids = v.encode(text)
    assert len(ids) == 3
    assert [v.chars[i] for i in ids] == ["😀", "a", "🎉"]
    # ids follow code point order: 'a' < U+1F389 < U+1F600
    assert v.chars == ["a", "🎉", "😀"]
    assert ids.tolist() == [2, 0, 1]


def test_ids_follow_sorted_order():
    v = of_text("cab")
    assert v.encode("abc").tolist() == [0, 1, 2]
    assert v.encode("cba").tolist() == [2, 1, 0]
    assert v.index == {"a": 0, "b": 1, "c": 2}


def test_encode_empty_text():
    v = of_text("abc")
    ids = v.encode("")
    assert ids.shape == (0,)
    assert v.decode(ids) == ""


@given(st.text(min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_round_trip_any_text(text):
    v = of_text(text)
    ids = v.encode(text)
    assert len(ids) == len(text)
    assert v.decode(ids) == text
    assert int(ids.max()) < len(v)
    assert v.chars == sorted(v.chars)


@pytest.mark.parametrize("text", ["plain ascii\n", CJK_EMOJI, '"quotes" and \\ backslashes \u2028 \x00 \ufeff'])
def test_json_round_trip(text):
    """The vocab as a checkpoint's metadata holds it: a JSON list of one-character strings."""
    v = of_text(text)
    data = json.dumps({"vocab": v.chars})  # as model/files.py writes the metadata
    assert isinstance(data, str)
    assert json.loads(data)["vocab"] == v.chars  # plain JSON: a list of one-character strings
    back = Vocab(json.loads(data)["vocab"])
    assert back.chars == v.chars
    assert back.decode(back.encode(text)) == text
    assert back.encode(text).tolist() == v.encode(text).tolist()


@pytest.mark.parametrize("data", ['{"a": 1}', '"abc"', "[1, 2]", '["a", 3]', "42"])
def test_a_checkpoint_whose_vocab_is_not_a_list_of_strings_is_refused(data):
    meta = {"model": dataclasses.asdict(ModelConfig(vocab_size=2)), "train": dataclasses.asdict(TrainConfig()),
            "vocab": ["a", "b"], "progress": {"step": 0, "epoch": 0, "window": 0, "elapsed_s": 0.0,
                                              "best_val": None, "best_step": 0, "skipped": 0},
            "corpus": {"name": "t", "fingerprint": "sha256:x"}}
    filecheck.check_meta(Path("ok.safetensors"), meta)  # the control: this metadata passes
    meta["vocab"] = json.loads(data)
    with pytest.raises(CheckpointError, match="vocab"):
        filecheck.check_meta(Path("bad.safetensors"), meta)


@pytest.mark.parametrize("chars", [["a", "a"], ["ab"], [""], ["a", "b", "a"]])
def test_constructor_rejects_duplicates_and_multi_character_entries(chars):
    with pytest.raises(ValueError):
        Vocab(chars)


@pytest.mark.parametrize(
    ("size", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_id_dtype_is_the_smallest_that_holds_every_id(size, dtype):
    v = Vocab(non_surrogates(0, size))
    assert v.id_dtype is dtype
    # the largest id is representable, and encode returns that dtype
    last = v.chars[-1]
    ids = v.encode(v.chars[0] + last)
    assert ids.dtype == dtype
    assert ids.tolist() == [0, size - 1]
    assert v.decode(ids) == v.chars[0] + last


def test_large_vocab_round_trip_with_astral_characters():
    chars = non_surrogates(0x1F000, 300) + non_surrogates(0x20000, 100) + list("abc")
    v = Vocab(chars)
    assert v.id_dtype is np.uint16
    text = "".join(chars[::-1]) + "abc" + "".join(chars[::7])
    assert v.decode(v.encode(text)) == text


def test_encode_unknown_characters_raises_naming_them():
    v = of_text("abc")
    with pytest.raises(KeyError) as exc:
        v.encode("abxzc🙂")
    message = str(exc.value)
    for ch in "xz🙂":
        assert ch in message
    # characters beyond the largest and below the smallest code point are unknown too
    with pytest.raises(KeyError):
        v.encode("\x00")
    with pytest.raises(KeyError):
        v.encode("\U0010ffff")


def test_unknown_lists_each_missing_character_once_sorted():
    v = of_text("hello")
    assert v.unknown("hello") == []
    assert v.unknown("") == []
    assert v.unknown("help! 🙂 help!") == [" ", "!", "p", "🙂"]


def test_contains():
    v = of_text("ab😀")
    assert "a" in v and "😀" in v
    assert "c" not in v and "😁" not in v


def test_a_lone_surrogate_is_a_character_no_vocabulary_has():
    """JSON (a server's prompt) can carry one; it is unknown, read as the fallback where there is one."""
    plain, kept = Vocab(list("ab")), Vocab(list("ab\ufffd"), fallback="\ufffd")
    assert plain.unknown("a\ud800b") == ["\ud800"]
    assert kept.decode(kept.encode("a\ud800b")) == "a\ufffdb"
