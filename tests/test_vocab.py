"""Vocab: sorted Unicode code points <-> ids, JSON round trip, id dtypes, unknown characters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.vocab import Vocab

CJK_EMOJI = "日本語のテキスト 中文字符 한국어 😀🎉🐍🦀 \U0001f680\U00020000 naïve café\n"


def non_surrogates(start: int, count: int) -> list[str]:
    """count distinct encodable characters from code point start up (surrogates cannot be UTF-32 encoded)."""
    out, cp = [], start
    while len(out) < count:
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
        cp += 1
    return out


def test_from_text_is_the_sorted_set_of_code_points():
    v = Vocab.from_text("banana 🍌 bandana")
    assert v.chars == sorted(set("banana 🍌 bandana"))
    assert v.chars == [" ", "a", "b", "d", "n", "🍌"]
    assert len(v) == 6
    assert all(len(c) == 1 for c in v.chars)  # code points, never bytes or surrogate halves


@pytest.mark.parametrize("text", ["hello world\n", CJK_EMOJI, "a", "\r\n\t \x7f", "🐍" * 50 + "x"])
def test_encode_decode_round_trip(text):
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert ids.shape == (len(text),)  # one id per character, not per UTF-8 byte
    assert v.decode(ids) == text
    assert v.decode(ids.tolist()) == text


def test_astral_plane_characters_are_single_ids():
    text = "😀a🎉"
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert len(ids) == 3
    assert [v.chars[i] for i in ids] == ["😀", "a", "🎉"]
    # ids follow code point order: 'a' < U+1F389 < U+1F600
    assert v.chars == ["a", "🎉", "😀"]
    assert ids.tolist() == [2, 0, 1]


def test_ids_follow_sorted_order():
    v = Vocab.from_text("cab")
    assert v.encode("abc").tolist() == [0, 1, 2]
    assert v.encode("cba").tolist() == [2, 1, 0]
    assert v.index == {"a": 0, "b": 1, "c": 2}


def test_encode_empty_text():
    v = Vocab.from_text("abc")
    ids = v.encode("")
    assert ids.shape == (0,)
    assert v.decode(ids) == ""


@given(st.text(min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_round_trip_any_text(text):
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert len(ids) == len(text)
    assert v.decode(ids) == text
    assert int(ids.max()) < len(v)
    assert v.chars == sorted(v.chars)


@pytest.mark.parametrize("text", ["plain ascii\n", CJK_EMOJI, '"quotes" and \\ backslashes \u2028 \x00 \ufeff'])
def test_json_round_trip(text):
    v = Vocab.from_text(text)
    data = v.to_json()
    assert isinstance(data, str)
    assert json.loads(data) == v.chars  # plain JSON: a list of one-character strings
    back = Vocab.from_json(data)
    assert back.chars == v.chars
    assert back.decode(back.encode(text)) == text
    assert back.encode(text).tolist() == v.encode(text).tolist()


@pytest.mark.parametrize("data", ['{"a": 1}', '"abc"', "[1, 2]", '["a", 3]', "42"])
def test_from_json_rejects_non_lists_of_strings(data):
    with pytest.raises(ValueError):
        Vocab.from_json(data)


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
    v = Vocab.from_text("abc")
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
    v = Vocab.from_text("hello")
    assert v.unknown("hello") == []
    assert v.unknown("") == []
    assert v.unknown("help! 🙂 help!") == [" ", "!", "p", "🙂"]


def test_contains():
    v = Vocab.from_text("ab😀")
    assert "a" in v and "😀" in v
    assert "c" not in v and "😁" not in v
