"""charrnn sample through the CLI, with real tiny checkpoints: every option, edge case and pipe."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli, make_text

from charrnn import device as devices
from charrnn.config import SampleConfig
from charrnn.generation.sample import PRIME_CHUNK, filtered_logprobs, generate_batch, in_order, warm_up
from charrnn.model import files as checkpoint

UNI = "aé日🙂ßb \n"  # a corpus alphabet that is mostly outside ASCII


def trained(tmp: Path, text: str) -> Path:
    """Train a tiny model on text through the CLI; returns its best.safetensors."""
    (tmp / "c.txt").write_text(text, encoding="utf-8")
    result = cli("train", tmp / "c.txt", *TINY, "--cell", "lstm", "--max-steps", "6", "--eval-every", "3",
                 "--out", tmp / "runs")  # an LSTM: long_memory holds its forget gates open
    assert result.exit_code == 0, result.stderr
    return tmp / "runs" / "c" / "best.safetensors"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("ascii"), make_text(6000))


@pytest.fixture(scope="module")
def uni_ckpt(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("uni"), make_text(6000, alphabet=UNI))


FP32 = ("--precision", "fp32")  # where the text is checked against the fp32 model's own probabilities


def sample(ckpt: Path, *args, input: str | None = None) -> str:
    result = cli("sample", ckpt, *args, input=input)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def step_logits(ckpt: Path, prime: str, text: str) -> tuple[torch.Tensor, list[int]]:
    """The model's logits (L, V) before each character of text (generated after prime), and text's ids."""
    model, vocab, _ = checkpoint.load_model(ckpt, devices.pick("cpu"))
    context = prime or "\n"
    ids = vocab.encode(context + text).astype("int64")
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids[:-1])[None])  # (1, P + L - 1, V)
    return logits[0, len(context) - 1 :], ids[len(context) :].tolist()


def ranks(ckpt: Path, prime: str, text: str) -> list[int]:
    """For each character of text: how many characters the model found likelier at that step."""
    logits, ids = step_logits(ckpt, prime, text)
    return [int((row > row[i] + 1e-5).sum()) for row, i in zip(logits, ids, strict=True)]


def test_same_seed_same_text_and_another_seed_differs(ckpt):
    opts = ["-n", "200", "--top-k", "5", "--top-p", "0.95", "-t", "0.9", "--num-samples", "3", "--stop", "k "]
    first = sample(ckpt, *opts, "--seed", "7")
    assert first == sample(ckpt, *opts, "--seed", "7")
    assert first != sample(ckpt, *opts, "--seed", "8")


def test_temp_zero_is_argmax_and_top_k_1_and_tiny_temps_agree(ckpt):
    greedy = sample(ckpt, "-n", "60", "-t", "0", "--seed", "1")
    assert greedy == sample(ckpt, "-n", "60", "-t", "0", "--seed", "2")  # no randomness at all
    assert set(ranks(ckpt, "", greedy)) == {0}  # each character was the likeliest at its step
    assert sample(ckpt, "-n", "60", "--top-k", "1", "--seed", "3") == greedy
    assert sample(ckpt, "-n", "60", "--top-p", "1e-9", "--seed", "4") == greedy
    for tiny in ("1e-30", "1e-300", "5e-324"):  # no NaN or overflow: the likeliest character wins
        assert sample(ckpt, "-n", "60", "-t", tiny, "--seed", "5") == greedy


def test_top_k_draws_only_from_the_k_likeliest(ckpt):
    hot = sample(ckpt, "-n", "300", "-t", "5", "--seed", "1", *FP32)
    assert max(ranks(ckpt, "", hot)) >= 2  # without --top-k, a hot temperature strays beyond the top 2
    limited = sample(ckpt, "-n", "300", "-t", "5", "--top-k", "2", "--seed", "1", *FP32)
    assert max(ranks(ckpt, "", limited)) <= 1


def likelier_mass(ckpt: Path, text: str, temp: float) -> list[float]:
    """For each character of text: the probability of the characters likelier than it at that step."""
    logits, ids = step_logits(ckpt, "", text)
    probs = torch.softmax(logits.double() / temp, dim=-1)  # (L, V) at the sampling temperature
    return [float(p[p > p[i] + 1e-9].sum()) for p, i in zip(probs, ids, strict=True)]


def test_top_p_draws_only_from_the_nucleus(ckpt):
    free = sample(ckpt, "-n", "300", "-t", "2", "--seed", "1", *FP32)
    assert max(likelier_mass(ckpt, free, 2)) >= 0.5  # without --top-p some picks lie outside the nucleus
    nucleus = sample(ckpt, "-n", "300", "-t", "2", "--top-p", "0.5", "--seed", "1", *FP32)
    assert max(likelier_mass(ckpt, nucleus, 2)) < 0.5


def test_filtered_logprobs_are_finite_where_kept():
    logits = torch.tensor([[3.0, 1.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])  # (2, 4)
    for temp, k, p in [(1e-300, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.3), (1e300, 3, 0.9)]:
        logp = filtered_logprobs(logits, temp, k, p)
        assert not logp.isnan().any()
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, dtype=torch.float64))
    assert (filtered_logprobs(logits, 1.0, 2)[0].isinf() == torch.tensor([False, False, False, True])).all()


@pytest.mark.parametrize("args", [
    ["-t", "-1"], ["-t", "nan"], ["-t", "inf"], ["-t", "-inf"], ["--top-k", "-1"], ["--top-p", "0"],
    ["--top-p", "1.5"], ["--top-p", "nan"], ["--top-p", "-0.2"], ["--num-samples", "0"], ["-n", "-1"],
    ["-n", "0", "--num-samples", "2"], ["--prime", "a", "--prime-file", "p.txt"],
])
def test_bad_options_are_usage_errors(args):
    result = cli("sample", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_num_samples_are_written_in_order_with_the_separator(ckpt):
    text = sample(ckpt, "-n", "40", "-p", "ab", "--num-samples", "4", "--separator", "=\\n", "--seed", "2")
    parts = text.split("=\n")
    assert len(parts) == 4 and all(len(p) == 42 and p.startswith("ab") for p in parts)
    assert len(set(parts)) == 4  # independent draws
    default = sample(ckpt, "-n", "40", "--num-samples", "3", "--seed", "2")
    assert len(default) == 3 * 40 + 2 * 2  # separated by a blank line: "\n\n"


def test_num_samples_share_one_forward_pass_per_step(ckpt):
    model, vocab, _ = checkpoint.load_model(ckpt, devices.pick("cpu"))
    batches = []
    model.register_forward_hook(lambda m, args, out: batches.append(args[0].shape))
    cfg = SampleConfig(length=10, num_samples=5, prime="ab")
    events = list(generate_batch(model, vocab, cfg, 0, devices.pick("cpu"), fast=False))
    assert batches == [(1, 2)] + [(5, 1)] * 9  # the prime once, then every sample in one batch per step
    fused = list(generate_batch(model, vocab, cfg, 0, devices.pick("cpu")))
    assert len(batches) == 11 and fused == events  # fused: the prime alone goes through the modules; same text
    assert sum(ch is None for _, ch in events) == 5 and len(events) == 5 * 11


def test_stop_ends_a_sample_at_its_first_occurrence(ckpt):
    full = sample(ckpt, "-n", "300", "-p", "ab ", "--seed", "4")
    gen = full[3:]
    assert "k" in gen
    stopped = sample(ckpt, "-n", "300", "-p", "ab ", "--stop", "k", "--seed", "4")
    assert stopped == "ab " + gen[: gen.index("k") + 1]  # the stop string included; the prime never stops it
    assert sample(ckpt, "-n", "300", "-p", "ab ", "--stop", "\\n", "--seed", "4").endswith("\n")
    absent = sample(ckpt, "-n", "50", "--stop", "no such text", "--seed", "4")
    assert len(absent) == 50  # otherwise --length ends it


def test_a_multi_character_stop_ends_at_its_first_whole_occurrence(ckpt):
    gen = sample(ckpt, "-n", "300", "-p", "ab ", "--seed", "4")[3:]
    # a 3-character stop first seen at i, whose first character was generated earlier on its own
    i = next(i for i in range(10, len(gen) - 3) if gen.index(gen[i : i + 3]) == i and gen.index(gen[i]) < i)
    stop = gen[i : i + 3]
    assert sample(ckpt, "-n", "300", "-p", "ab ", "--stop", stop, "--seed", "4") == "ab " + gen[: i + 3]
    # one that ends a line, given with the \n escape, first seen after a newline was generated on its own
    j = next(j for j in range(3, len(gen)) if gen[j] == "\n" and gen.index(gen[j - 1 : j + 1]) == j - 1
             and "\n" in gen[: j - 1])
    given = gen[j - 1 : j + 1].replace("\n", "\\n")
    assert sample(ckpt, "-n", "300", "-p", "ab ", "--stop", given, "--seed", "4") == "ab " + gen[: j + 1]


def test_a_stop_inside_the_prime_does_not_end_the_sample(ckpt):
    prime = "ab k"  # holds the stop string "k"; only generated text counts
    gen = sample(ckpt, "-n", "300", "-p", prime, "--seed", "4")[len(prime) :]
    assert "k" in gen
    stopped = sample(ckpt, "-n", "300", "-p", prime, "--stop", "k", "--seed", "4")
    assert stopped == prime + gen[: gen.index("k") + 1] and len(stopped) > len(prime)
    whole = sample(ckpt, "-n", "300", "-p", prime, "--stop", prime, "--seed", "4")  # the prime itself
    assert whole == prime + (gen[: gen.index(prime) + len(prime)] if prime in gen else gen)
    # a stop that the prime's last character and the first generated one would make: not generated, no stop
    straddle = prime[-1] + gen[0]
    assert straddle not in gen[:2]
    expected = prime + (gen[: gen.index(straddle) + 2] if straddle in gen else gen)
    assert sample(ckpt, "-n", "300", "-p", prime, "--stop", straddle, "--seed", "4") == expected


def test_in_order_writes_samples_one_after_another_whatever_order_they_end():
    events = [(1, "x"), (2, "q"), (1, None), (0, "a"), (2, "r"), (2, None), (0, "b"), (0, None)]
    chunks = list(in_order(iter(events), 3, "P:", "|"))
    assert "".join(chunks) == "P:ab|P:x|P:qr"
    assert chunks[:3] == ["P:", "a", "b"]  # the first sample streams as it comes; the others wait their turn


def test_num_samples_in_order_when_a_later_sample_ends_first(ckpt):
    model, vocab, _ = checkpoint.load_model(ckpt, devices.pick("cpu"))
    for seed in range(100):  # find a draw in which a later sample ends before an earlier one
        cfg = SampleConfig(length=200, num_samples=4, prime="ab", stop=" ", separator="|", seed=seed)
        events = list(generate_batch(model, vocab, cfg, seed, devices.pick("cpu")))
        ends = [i for i, ch in events if ch is None]
        if ends != sorted(ends):
            break
    else:
        pytest.fail("no seed in 100 ended the samples out of order")
    texts = ["", "", "", ""]
    for i, ch in events:
        texts[i] += ch or ""
    assert all(t.endswith(" ") and t.count(" ") == 1 for t in texts)  # each ended at its stop
    expected = "|".join("ab" + t for t in texts)
    out = sample(ckpt, "-n", "200", "-p", "ab", "--num-samples", "4", "--stop", " ", "--separator", "|",
                 "--seed", str(seed), "--device", "cpu")
    assert out == expected


@pytest.fixture
def long_memory(ckpt, tmp_path) -> Path:
    """The tiny model with its LSTM forget gates held open (bias +20: f = 1 in float32), saved as a checkpoint:
    its cell state sums the whole prime, so a state not carried from chunk to chunk shows. A trained tiny model
    forgets within a few dozen characters and could not tell."""
    tensors, meta = checkpoint.load(ckpt)
    hidden = meta["model"]["hidden_size"]
    bias = tensors["model.rnn.bias_ih_l0"].clone()  # (4H,): input, forget, cell, output gates
    bias[hidden : 2 * hidden] = 20.0
    tensors["model.rnn.bias_ih_l0"] = bias
    path = tmp_path / "long_memory.safetensors"
    checkpoint.save(path, tensors, meta)
    return path


def test_a_prime_longer_than_a_chunk_leaves_the_state_of_one_pass(long_memory, tmp_path):
    cpu = devices.pick("cpu")
    model, vocab, _ = checkpoint.load_model(long_memory, cpu)
    prime = make_text(2 * PRIME_CHUNK + 1000, seed=9)  # three chunks, the last one partial
    ids = torch.from_numpy(vocab.encode(prime).astype("int64"))[None]  # (1, P)
    with torch.no_grad():
        logits, state = warm_up(model, vocab, prime, torch.Generator().manual_seed(0), cpu)
        full, full_state = model(ids)  # one forward pass over the whole prime: (1, P, V)
        _, tail_state = model(ids[:, 2 * PRIME_CHUNK :])  # the last chunk alone, from a fresh state
    assert len(state) == len(full_state) == 2  # LSTM: (h, c)
    assert torch.allclose(logits, full[:, -1], rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(state, full_state, strict=True))
    assert not torch.allclose(tail_state[1], full_state[1], rtol=1e-2, atol=1e-2)  # control: the model remembers

    # the CLI takes such a prime from a file and continues from that state: greedy continuation, step by step
    greedy, x, s = [], full[:, -1], full_state
    with torch.no_grad():
        for _ in range(40):
            i = int(x.float().argmax(dim=-1))
            greedy.append(vocab.chars[i])
            x, s = model(torch.tensor([[i]]), s)
            x = x[:, -1]
    (tmp_path / "long.txt").write_text(prime, encoding="utf-8")
    out = sample(long_memory, "--prime-file", tmp_path / "long.txt", "-n", "40", "-t", "0", "--device", "cpu")
    assert out == prime + "".join(greedy)


def test_stop_with_num_samples(ckpt):
    text = sample(ckpt, "-n", "0", "--num-samples", "3", "--stop", " ", "--separator", "|", "--seed", "6")
    parts = text.split("|")
    assert len(parts) == 3 and all(p.endswith(" ") and p.count(" ") == 1 for p in parts)


def test_prime_from_stdin_file_and_argument_agree(ckpt, tmp_path):
    prime = "ab ci\nk"
    given = sample(ckpt, "-n", "50", "-p", prime, "--seed", "9")
    assert given.startswith(prime) and len(given) == len(prime) + 50
    assert sample(ckpt, "-n", "50", "-p", "-", "--seed", "9", input=prime) == given
    (tmp_path / "p.txt").write_text(prime, encoding="utf-8")
    assert sample(ckpt, "-n", "50", "--prime-file", tmp_path / "p.txt", "--seed", "9") == given


def test_unknown_prime_characters_are_named_and_skipped(ckpt):
    result = cli("sample", ckpt, "-n", "50", "-p", "aé日b", "--seed", "9")
    assert result.exit_code == 0
    assert "é" in result.stderr and "日" in result.stderr and "warning" in result.stderr
    assert result.stdout == "aé日b" + sample(ckpt, "-n", "50", "-p", "ab", "--seed", "9")[2:]


def test_missing_prime_file_is_an_error(ckpt):
    result = cli("sample", ckpt, "--prime-file", "nope.txt")
    assert result.exit_code == 1 and "nope.txt" in result.stderr and "Traceback" not in result.stderr


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def pipe_into_head(args: list, nbytes: int = 100) -> tuple[bytes, int, bytes]:
    """`python -m charrnn ARGS | head -c NBYTES` through a real pipe: (head's output, charrnn's exit, its stderr)."""
    producer = subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env())
    head = subprocess.Popen(["head", "-c", str(nbytes)], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head alone holds the read end: its exit closes the pipe
    out, _ = head.communicate(timeout=120)
    err = producer.stderr.read()
    return out, producer.wait(timeout=120), err


def test_closed_stdout_ends_quietly(ckpt):
    out, code, err = pipe_into_head(["sample", ckpt, "-n", "100000", "--seed", "1"])
    assert len(out) == 100 and code == 0 and err == b""


def test_endless_sampling_with_the_default_checkpoint_ends_when_the_pipe_closes(ckpt, tmp_path):
    shutil.copytree(ckpt.parent, tmp_path / "checkpoints" / "mine")
    out, code, err = pipe_into_head(["sample", "-n", "0"], nbytes=5000)
    assert len(out) == 5000 and code == 0
    assert err == b""  # stderr is not a terminal: nothing to say


def default_sigint() -> None:
    """In the child before exec: SIGINT as an interactive shell leaves it. A process started with SIGINT ignored
    keeps ignoring it, Python included, and a shell script's background job (`pytest &`) starts so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_without_a_traceback(ckpt):
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", ckpt, "-n", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    assert proc.stdout.read(10)  # generation is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    watchdog.cancel()
    assert proc.returncode == 130 and err == b""


def test_output_is_utf8_whatever_the_locale(uni_ckpt):
    plain = {k: v for k, v in env().items() if k not in ("PYTHONIOENCODING", "LANG") and not k.startswith("LC_")}
    c_locale = {**plain, "LC_ALL": "C", "PYTHONUTF8": "0"}  # Python's own stdout would be ASCII here
    proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", uni_ckpt, "-n", "200", "-p", "日🙂",
                           "--seed", "3"], capture_output=True, env=c_locale, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("utf-8")
    assert text.startswith("日🙂") and len(text) == 202
    assert set(text[2:]) - set(" \nab")  # non-ASCII characters were generated and written
    assert text == sample(uni_ckpt, "-n", "200", "-p", "日🙂", "--seed", "3")


@pytest.mark.parametrize("n, vocab", [(1, 65), (3, 7), (32, 100), (1, 40_000)])
def test_noise_in_growing_blocks_is_the_noise_of_one_draw(n, vocab):
    """Noise cuts the generator's numbers into blocks that start short and double: the numbers, and so the text,
    are those of one draw of every step at once."""
    from charrnn.generation.sample import Noise

    noise = Noise(torch.Generator().manual_seed(9), n, vocab)
    steps = [noise.next() for _ in range(300)]  # (n, V) each
    u = torch.rand(300, n, vocab, generator=torch.Generator().manual_seed(9))  # (300, n, V)
    assert torch.equal(torch.stack(steps), -torch.log(-torch.log(u)))
