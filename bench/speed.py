"""Speed of charrnn against plain PyTorch and against the machine's own limits, measured in one process.

    python bench/speed.py [--quick] [--threads N] [--only LABEL|shared] [--quality]

Prints the CPU and thread count, the machine's fp32 matmul GFLOP/s and matrix-vector bandwidth, then one table:
- sampling chars/s through the CLI (`charrnn sample ... > /dev/null`, start-up subtracted) at batch 1 and with
  --num-samples 64, against the naive loop that calls the model's modules once per character, and against the
  bound for batch 1: one step must read every weight once, so bound = measured matrix-vector time per step; at
  64 streams, against the same products made for 64 rows (matrix-matrix; both loops make exactly these);
- training chars/s through the CLI (from metrics.jsonl) against a plain Embedding -> nn.LSTM/GRU/RNN -> Linear +
  AdamW loop on the same batches and the same network (both with T 128 and dropout 0.1), and model-FLOP
  utilisation (6 x parameters x chars/s over the matmul peak);
- start-up: `charrnn sample -n 1` against `python -c "import torch"` (best of 3 each);
- shared cores: default training alone against `--threads N` (the fixed count charrnn used to take), and with
  one other busy process (started and stopped here) against `--threads 1` under the same load.
Every row names its precision. On a CPU with native bf16, training and sampling get a row for fp32 and one for
--precision auto where auto chooses bf16 (one row, "fp32 = auto", where it does not); --quality adds, per model,
the validation loss after 300 equal steps in fp32 and in bf16 (same seed). --threads N pins charrnn's threads;
without it charrnn takes its default (adapting to load). Each figure is the best of two or three runs in this one
process. Rows are appended to bench/speed.log as they come. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
LOG = ROOT / "bench" / "speed.log"
MODELS = [("default gru 2x256", "gru", 256, 2), ("lstm 2x512", "lstm", 512, 2), ("gru 2x512", "gru", 512, 2),
          ("rnn 2x512", "rnn", 512, 2)]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def best_time(f, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def charrnn(*args: str, out=subprocess.DEVNULL, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "charrnn", *args], check=True, stdout=out, stderr=subprocess.DEVNULL,
                   env=env)


def matmul_gflops(threads: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    return 2 * 2048**3 / best_time(lambda: a @ b, 5) / 1e9


def products_step_s(model, rows: int = 1) -> float:
    """Seconds for the matrix products of one sampling step alone, as the fused step does them: (rows, in) times a
    pre-transposed (in, out) matrix, once per weight matrix. At one row, the time to read every weight once."""
    mats = [w.detach().T.contiguous() for name, w in model.named_parameters() if w.dim() == 2 and "embed" not in name]
    xs = [torch.randn(rows, m.shape[0]) for m in mats]

    def step():
        for x, m in zip(xs, mats, strict=True):
            x @ m

    for _ in range(20):
        step()
    return best_time(lambda: [step() for _ in range(200)], 5) / 200


def naive_chars_per_s(ckpt: Path, n: int) -> float:
    """The model's own modules once per character (generate_batch(fast=False)), in-process."""
    from charrnn.config import SampleConfig
    from charrnn.generation.sample import generate_batch
    from charrnn.model import files

    model, vocab, _ = files.load_model(ckpt, torch.device("cpu"))
    cfg = SampleConfig(length=n // 4 if n >= 4 else 1, num_samples=1)

    def go():
        for _ in generate_batch(model, vocab, cfg, 1, torch.device("cpu"), fast=False):
            pass

    return cfg.length / best_time(go, 2)


def naive_batch_chars_per_s(ckpt: Path, streams: int, n: int) -> float:
    from charrnn.config import SampleConfig
    from charrnn.generation.sample import generate_batch
    from charrnn.model import files

    model, vocab, _ = files.load_model(ckpt, torch.device("cpu"))
    cfg = SampleConfig(length=n, num_samples=streams)

    def go():
        for _ in generate_batch(model, vocab, cfg, 1, torch.device("cpu"), fast=False):
            pass

    return streams * n / best_time(go, 2)


def cli_sample_chars_per_s(ckpt: Path, n: int, streams: int = 1, precision: str = "auto") -> float:
    """Through the CLI into /dev/null; the time of -n 1 (start-up, loading, prime) subtracted."""
    extra = ["--precision", precision] + (["--num-samples", str(streams)] if streams > 1 else [])
    one = best_time(lambda: charrnn("sample", str(ckpt), "-n", "1", "--seed", "1", *extra), 2)
    full = best_time(lambda: charrnn("sample", str(ckpt), "-n", str(n), "--seed", "1", *extra), 2)
    return streams * (n - 1) / max(full - one, 1e-9)


class Plain(nn.Module):
    """The same network as charrnn's model of that size with --dropout 0.1: between layers and before the head."""

    def __init__(self, cell: str, vocab: int, hidden: int, layers: int, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, 64)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](64, hidden, layers, batch_first=True,
                                                                          dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(out)), state


def plain_train_chars_per_s(ids: torch.Tensor, vocab: int, cell: str, hidden: int, layers: int, steps: int) -> float:
    """The reference loop: B=32 streams, T=128, AdamW, clipping, state carried and detached, dropout 0.1."""
    torch.manual_seed(0)
    model, B, T = Plain(cell, vocab, hidden, layers), 32, 128
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    streams = ids[: (len(ids) - 1) // B * B + 1]
    L = (len(streams) - 1) // B
    x_all, y_all = streams[: B * L].view(B, L), streams[1 : B * L + 1].view(B, L)
    state = None

    def step(w):
        nonlocal state
        x, y = x_all[:, w * T : (w + 1) * T], y_all[:, w * T : (w + 1) * T]
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    for w in range(3):
        step(w)
    start = time.perf_counter()
    for w in range(3, 3 + steps):
        step(w)
    return steps * B * T / (time.perf_counter() - start)


def cli_train(corpus: Path, out: Path, cell: str, hidden: int, layers: int, steps: int, *extra: str,
              run: str | None = None, env: dict | None = None) -> tuple[float, str, float]:
    """charrnn train through the CLI: (the mean chars/s of its log rows after the first, warm-up, one; the
    precision it trained in; its last validation loss)."""
    run = run or f"{cell}{hidden}x{layers}"
    charrnn("train", str(corpus), "--cell", cell, "--hidden-size", str(hidden), "--num-layers", str(layers),
            "--seq-len", "128", "--dropout", "0.1", "--max-steps", str(steps + 5), "--log-every", "5",
            "--eval-every", "100000", "--val-frac", "0.002",
            "--out", str(out), "--run", run, "--force", "--device", "cpu", *extra, env=env)
    from charrnn.model import files

    rows = [json.loads(r) for r in (out / run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["chars_per_s"] for r in rows if "chars_per_s" in r][1:] or [math.nan]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    precision = files.load(out / run / "last.safetensors")[1]["train"]["precision"]
    return sum(rates) / len(rates), precision, vals[-1] if vals else math.nan


def startup(ckpt: Path) -> tuple[float, float]:
    torch_s = best_time(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), 3)
    first = best_time(lambda: charrnn("sample", str(ckpt), "-n", "1", "--seed", "1"), 3)
    return first, torch_s


def log(line: str, path: Path = LOG) -> None:
    """Print a line and append it to the log as it comes."""
    print(line, flush=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def precisions(cfg, path: str, rows: int = 1) -> list[tuple[str, str]]:
    """(flag, label) of the rows to measure for a ModelConfig: fp32, and auto where auto chooses otherwise."""
    from charrnn.device import precision

    auto = precision("auto", torch.device("cpu"), path, cfg, rows)
    return [("fp32", "fp32 = auto")] if auto == "fp32" else [("fp32", "fp32"), ("auto", f"auto: {auto}")]


def model_rows(label: str, cell: str, hidden: int, layers: int, corpus: Path, work: Path, ids: torch.Tensor,
               vocab: int, peak: float, quick: bool) -> None:
    """Training and sampling rows of one model, per precision."""
    from charrnn.config import ModelConfig
    from charrnn.model import files

    steps, n1, n64 = (5, 300, 20) if quick else (20, 3000, 200)
    cfg = ModelConfig(cell=cell, hidden_size=hidden, num_layers=layers)
    plain_rate = max(plain_train_chars_per_s(ids, vocab, cell, hidden, layers, steps) for _ in range(2))
    ckpt = work / f"{cell}{hidden}x{layers}" / "last.safetensors"
    for flag, tag in precisions(cfg, "train"):
        rate = max(cli_train(corpus, work, cell, hidden, layers, steps, "--precision", flag)[0] for _ in range(2))
        model, _, _ = files.load_model(ckpt, torch.device("cpu"))
        params = sum(p.numel() for p in model.parameters())
        log(f"| {label} | train chars/s ({tag}, B 32, T 128) | {rate:,.0f} | {plain_rate:,.0f} (fp32) | "
            f"{rate / plain_rate:.2f}x | MFU {6 * params * rate / (peak * 1e9):.0%} of fp32 peak |")
    bound = 1 / products_step_s(model)
    bound64 = 64 / products_step_s(model, 64)  # both loops make these very products, the same FLOPs
    naive = naive_chars_per_s(ckpt, n1)
    per_stream = n64 if quick else max(n64, int(bound64 / 64 * 4))  # about 4 s at least
    naive64 = naive_batch_chars_per_s(ckpt, 64, per_stream)
    weight_mb = sum(p.numel() * 4 for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n) / 1e6
    for flag, tag in precisions(cfg, "sample"):
        # at least about 4 s of sampling, so the start-up's noise (tenths of a second) stays small against it
        fast = cli_sample_chars_per_s(ckpt, n1 if quick else max(n1, int(bound * 4)), 1, flag)
        log(f"| {label} | sample chars/s, batch 1 ({tag}) | {fast:,.0f} | {naive:,.0f} | {fast / naive:.2f}x | "
            f"{fast / bound:.0%} of the fp32 bound {bound:,.0f}/s ({weight_mb:.1f} MB at "
            f"{weight_mb / 1e3 * bound:.1f} GB/s) |")
    for flag, tag in precisions(cfg, "sample", 64):
        fast64 = cli_sample_chars_per_s(ckpt, per_stream, 64, flag)
        util = 2 * params * fast64 / (peak * 1e9)
        log(f"| {label} | sample chars/s, 64 streams ({tag}) | {fast64:,.0f} | {naive64:,.0f} | "
            f"{fast64 / naive64:.2f}x | {util:.0%} of fp32 matmul peak; {fast64 / bound64:.0%} and the naive loop "
            f"{naive64 / bound64:.0%} of the fp32 products' own {bound64:,.0f}/s |")


def busy() -> subprocess.Popen:
    """Another process that keeps one core busy, as a browser tab or a second run would."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def shared_cores(corpus: Path, work: Path, threads: int, quick: bool) -> None:
    """Default training (threads adapting to load) alone against --threads N, and beside one busy process against
    --threads 1 beside it; fp32, the default model."""
    steps = 10 if quick else 60
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def rate(*extra: str) -> float:
        return cli_train(corpus, work, "gru", 256, 2, steps, "--precision", "fp32", *extra, run="shared", env=env)[0]

    alone, fixed = rate(), rate("--threads", str(threads))
    other = busy()
    try:
        loaded, one = rate(), rate("--threads", "1")
    finally:
        other.kill()
        other.wait()
    log(f"| default gru 2x256 | train chars/s alone (fp32): default vs --threads {threads} | {alone:,.0f} | "
        f"{fixed:,.0f} | {alone / fixed:.2f}x | target >= 0.95x |")
    log(f"| default gru 2x256 | train chars/s beside a busy process (fp32): default vs --threads 1 | {loaded:,.0f} | "
        f"{one:,.0f} | {loaded / one:.2f}x | target >= 0.60x |")


def quality(corpus: Path, work: Path, quick: bool) -> None:
    """Validation loss after 300 equal steps (20 with --quick), fp32 against bf16, same seed, per model."""
    steps = 20 if quick else 300
    for label, cell, hidden, layers in MODELS:
        (r32, _, v32), (r16, _, v16) = (
            cli_train(corpus, work, cell, hidden, layers, steps - 5, "--precision", p, "--eval-every", str(steps),
                      "--val-frac", "0.1", "--seed", "1", run="quality") for p in ("fp32", "bf16"))
        log(f"| {label} | val nats after {steps} steps, fp32 vs bf16 | {v32:.4f} | {v16:.4f} | "
            f"{r16 / r32:.2f}x chars/s | bf16 - fp32 = {v16 - v32:+.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and characters (a smoke run)")
    parser.add_argument("--threads", type=int, help="pin charrnn's threads (default: charrnn's own, adapting)")
    parser.add_argument("--only", help="measure only the models whose label starts with this, e.g. rnn; "
                        "'shared': only the shared-core rows")
    parser.add_argument("--quality", action="store_true", help="add val after 300 steps, fp32 vs bf16, per model")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or cores)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="charrnn-speed-"))
    corpus = SHAKESPEARE if SHAKESPEARE.is_file() else work / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(("To be, or not to be, that is the question.\n" * 30000), encoding="utf-8")
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text[:300_000]])
    from charrnn.device import native_bf16

    native = native_bf16(torch.device("cpu"))
    log(f"# {time.strftime('%Y-%m-%d %H:%M')} python {' '.join(sys.argv)}")
    log(f"# {cpu_name()}, {'native bf16' if native else 'no native bf16'}, "
        f"{args.threads or f'{cores} (adapting)'} threads, torch {torch.__version__}, corpus {corpus.name}")
    peak = matmul_gflops(args.threads or cores)
    log(f"# fp32 matmul peak (2048^3): {peak:,.0f} GFLOP/s")
    log("| model | measure | charrnn | reference | ratio | note |")
    log("|---|---|---:|---:|---:|---|")
    for label, cell, hidden, layers in [m for m in MODELS if m[0].startswith(args.only or "")]:
        model_rows(label, cell, hidden, layers, corpus, work, ids, len(chars), peak, args.quick)
    ckpt = work / "lstm512x2" / "last.safetensors"
    if ckpt.exists():
        first, torch_s = startup(ckpt)
        log(f"| lstm 2x512 | start-up: sample -n 1 vs import torch (s) | {first:.2f} | {torch_s:.2f} | "
            f"+{first - torch_s:.2f} s | target <= +0.40 s |")
    if args.only in (None, "shared"):
        shared_cores(corpus, work, args.threads or cores, args.quick)
    if args.quality and native:
        quality(corpus, work, args.quick)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
