"""TBPTT streams: (B, T) windows, contiguous streams, no wrap-around, the size floor, the remainder window.

The text used here is ids = 0, 1, 2, ..., N-1, so every id *is* its own position in the text: an input at
position p must have target p + 1, and no target may exceed N - 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.batches import Streams, min_chars
from charrnn.data.corpus import Corpus
from charrnn.data.vocab import Vocab


def positions(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint32)


def stream_len(n: int, b: int) -> int:
    """Input characters per stream: every stream needs one extra character for its last target."""
    return (n - 1) // b


@pytest.mark.parametrize(("n", "b", "t"), [(1000, 4, 16), (65, 4, 16), (12345, 7, 33), (200, 1, 10)])
def test_window_shapes_and_dtype(n, b, t):
    s = Streams(positions(n), b, t)
    assert len(s) == stream_len(n, b) // t
    for x, y in s:
        assert x.shape == (b, t) and y.shape == (b, t)
        assert x.dtype == torch.int64 and y.dtype == torch.int64


@pytest.mark.parametrize("full_windows", [True, False])
@pytest.mark.parametrize(("n", "b", "t"), [(1000, 4, 16), (65, 4, 16), (1001, 4, 16), (999, 3, 7), (50, 1, 49)])
def test_every_target_is_the_next_character_and_never_wraps(n, b, t, full_windows):
    s = Streams(positions(n), b, t, full_windows=full_windows)
    assert len(s) >= 1
    for x, y in s:
        assert torch.equal(y, x + 1)  # target = the character right after the input, in the original text
        assert int(y.max()) <= n - 1  # inside the text
        assert int(y.min()) >= 1  # nothing wrapped around to the corpus start
        assert int(x.max()) <= n - 2


@pytest.mark.parametrize(("n", "b", "t"), [(1000, 4, 16), (1001, 4, 16), (999, 3, 7)])
def test_windows_of_one_stream_concatenated_give_back_that_stream(n, b, t):
    s = Streams(positions(n), b, t)
    L = stream_len(n, b)
    used = (L // t) * t  # full windows only: the remainder of each stream is left out
    for stream in range(b):
        xs = torch.cat([x[stream] for x, _ in s])
        ys = torch.cat([y[stream] for _, y in s])
        start = stream * L
        assert xs.tolist() == list(range(start, start + used))
        assert ys.tolist() == list(range(start + 1, start + used + 1))


@pytest.mark.parametrize(("n", "b", "t"), [(1000, 4, 16), (1001, 4, 16), (999, 3, 7), (100, 3, 200)])
def test_full_windows_false_covers_the_remainder(n, b, t):
    s = Streams(positions(n), b, t, full_windows=False)
    L = stream_len(n, b)
    assert len(s) == -(-L // t)  # ceil
    widths = [x.shape[1] for x, _ in s]
    assert all(w == t for w in widths[:-1])
    assert widths[-1] == L - (len(s) - 1) * t  # the last window takes whatever is left
    for stream in range(b):
        xs = torch.cat([x[stream] for x, _ in s])
        assert xs.tolist() == list(range(stream * L, (stream + 1) * L))
    # together the streams cover text[0 : B*L] as inputs, each position exactly once
    all_x = torch.cat([x.flatten() for x, _ in s]).sort().values
    assert all_x.tolist() == list(range(b * L))


def test_streams_are_contiguous_and_do_not_overlap():
    n, b, t = 500, 5, 8
    s = Streams(positions(n), b, t)
    x0, _ = s.window(0)
    L = stream_len(n, b)
    assert x0[:, 0].tolist() == [k * L for k in range(b)]  # stream k starts at k * L
    x1, _ = s.window(1)
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # window 1 continues window 0 in every stream


@pytest.mark.parametrize(("b", "t"), [(1, 1), (4, 16), (32, 128), (3, 7)])
def test_min_chars_is_the_exact_floor(b, t):
    n = min_chars(b, t)
    assert n == b * t + 1
    s = Streams(positions(n), b, t)
    assert len(s) == 1
    x, y = s.window(0)
    assert x.shape == (b, t)
    assert int(y.max()) == n - 1
    with pytest.raises(ValueError):
        Streams(positions(n - 1), b, t)


def test_too_short_for_full_windows_but_enough_for_a_partial_one():
    b, t = 4, 16
    n = min_chars(b, t) - 1  # 64 characters: streams of 15 inputs
    with pytest.raises(ValueError):
        Streams(positions(n), b, t)
    s = Streams(positions(n), b, t, full_windows=False)
    assert len(s) == 1
    x, y = s.window(0)
    assert x.shape == (b, 15)
    assert torch.equal(y, x + 1)


def test_nothing_at_all_is_refused_even_with_partial_windows():
    with pytest.raises(ValueError):
        Streams(positions(4), 4, 16, full_windows=False)  # 3 inputs for 4 streams


def test_accepts_small_unsigned_id_arrays():
    ids = (np.arange(300) % 7).astype(np.uint8)
    s = Streams(ids, 2, 10)
    x, y = s.window(0)
    assert x.dtype == torch.int64
    assert x[0].tolist() == ids[:10].tolist()
    assert y[0].tolist() == ids[1:11].tolist()


@given(n=st.integers(2, 3000), b=st.integers(1, 16), t=st.integers(1, 64), full=st.booleans())
@settings(max_examples=150, deadline=None)
def test_properties_hold_for_any_size(n, b, t, full):
    L = (n - 1) // b
    if L < (t if full else 1):
        with pytest.raises(ValueError):
            Streams(positions(n), b, t, full_windows=full)
        return
    s = Streams(positions(n), b, t, full_windows=full)
    seen = []
    for x, y in s:
        assert x.shape[0] == b and 1 <= x.shape[1] <= t
        assert torch.equal(y, x + 1)
        assert int(y.max()) <= n - 1
        seen.append(x)
    xs = torch.cat(seen, dim=1)  # (B, windows * T)
    covered = L if not full else (L // t) * t
    assert xs.shape == (b, covered)
    for k in range(b):
        assert xs[k].tolist() == list(range(k * L, k * L + covered))


def test_corpus_split_holds_out_the_contiguous_tail():
    text = "abcdefghij" * 100
    vocab = Vocab(list(set(text)))
    c = Corpus("t", vocab, vocab.encode(text), "sha256:x")
    train, val = c.split(0.1, 0)
    assert [len(v) for v in c.split(0.1, 40)] == [960, 40] and len(c.split(0.1, 100)[1]) == 100  # capped
    assert len(val) == 100 and len(train) == 900
    assert vocab.decode(train) + vocab.decode(val) == text
    assert vocab.decode(val) == text[-100:]
