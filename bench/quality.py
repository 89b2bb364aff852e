"""Quality per CPU-minute: `charrnn train tinyshakespeare.txt --minutes M` through the CLI, one run at a time.

    python bench/quality.py                                  # the defaults, M in {1.5, 5}
    python bench/quality.py --minutes 1.5 --flags "" --flags "--cell gru" --flags "--seq-len 64 --lr 5e-3"
    python bench/quality.py --big 400                        # only: a 400 MB corpus, --max-steps 1

Each --flags string is one configuration (extra `charrnn train` flags; "" is the defaults). For every
configuration and M it prints one row: the best validation loss (nats and bits per character, on the corpus's
held-out split), steps, mean training chars/s, and the whole command's wall time, under a header naming the CPU
and thread count. --big MB instead times `charrnn train BIG --max-steps 1` on a corpus of that many MB (tiny
Shakespeare repeated; a cold cache): preparing it, one step and the final evaluation, as MB of corpus per second
of the whole command. Rows are appended to bench/quality.log as they come. Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402
from speed import SHAKESPEARE, cpu_name  # noqa: E402

LOG = Path(__file__).resolve().parent / "quality.log"


def train(corpus: Path, minutes: float, flags: str, out: Path, run: str = "q") -> dict:
    """One `charrnn train` run; its best validation loss, steps, chars/s and wall time, from metrics.jsonl."""
    command = [sys.executable, "-m", "charrnn", "train", str(corpus), "--minutes", str(minutes), "--out", str(out),
               "--run", run, "--force", *shlex.split(flags)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(r) for r in (out / run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    rates = [r["chars_per_s"] for r in rows if "chars_per_s" in r][1:] or [math.nan]
    return {"best": min(vals), "steps": rows[-1]["step"], "chars_per_s": sum(rates) / len(rates), "wall_s": wall}


def big_corpus(corpus: Path, mb: int, work: Path) -> None:
    """charrnn train on mb MB of the corpus repeated, --max-steps 1, cold cache: MB/s of the whole command."""
    big, block = work / "big.txt", corpus.read_bytes()
    with open(big, "wb") as f:
        for _ in range(mb * 10**6 // len(block) + 1):
            f.write(block)
    size = big.stat().st_size / 1e6
    command = [sys.executable, "-m", "charrnn", "train", str(big), "--max-steps", "1", "--out", str(work / "out")]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    log(f"| `--max-steps 1` on {size:,.0f} MB (prepare, 1 step, final evaluation) | | | | 1 | | {wall:.1f} "
        f"({size / wall:.0f} MB/s) |")


def log(line: str) -> None:
    speed.log(line, LOG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.5, 5.0])
    parser.add_argument("--flags", action="append", help="extra train flags for one configuration (repeatable)")
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--keep", type=Path, metavar="OUT", help="keep the runs in OUT/q-M, or OUT/q-M-K for the "
                        "K-th of several --flags (else a temporary one)")
    parser.add_argument("--big", type=int, metavar="MB", help="only time a corpus of this many MB, --max-steps 1")
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"{args.corpus} not found: this benchmark needs the tiny-shakespeare corpus")
    configs = args.flags if args.flags is not None else [""]
    threads = len(os.sched_getaffinity(0))
    log(f"# {time.strftime('%Y-%m-%d %H:%M')} python {shlex.join(['bench/quality.py', *sys.argv[1:]])}")
    log(f"# {cpu_name()}, {threads} threads, corpus {args.corpus.name}")
    log("| flags | minutes | best val nats/char | bits/char | steps | train chars/s | wall s |")
    log("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="charrnn-quality-") as work:
        if args.big:
            return big_corpus(args.corpus, args.big, Path(work))
        for k, flags in enumerate(configs, 1):
            for minutes in args.minutes:
                name = f"q-{minutes:g}" + (f"-{k}" if len(configs) > 1 else "")  # one directory a run
                out, run = (args.keep, name) if args.keep else (Path(work), "q")
                r = train(args.corpus, minutes, flags, out, run)
                log(f"| `{flags or '(defaults)'}` | {minutes:g} | {r['best']:.4f} | {r['best'] / math.log(2):.4f} | "
                    f"{r['steps']:,} | {r['chars_per_s']:,.0f} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
