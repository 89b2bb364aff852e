"""Training speed under torchrun on the CPU: N processes (gloo) against one process, the same global batch.

    python bench/distributed.py [--steps 100] [--nproc 2] [--corpus FILE]

Trains the default model (a 2x256 GRU, --batch-size 32, --seq-len 64, fp32) on tiny Shakespeare for --steps
steps, alternately as one process (`charrnn train`, threads: every core) and under `torchrun --nproc-per-node N`
(each process: cores / N threads), twice each; a run's speed is the median chars/s of its metrics.jsonl rows
after the first (the first holds the warm-up), and each way's figure is the better of its two runs. Prints one
table with the CPU and this command, and appends it to bench/distributed.log. Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
LOG = ROOT / "bench" / "distributed.log"
BIN = Path(sys.executable).parent


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor() or platform.machine())


def chars_per_s(launch: list[str], corpus: Path, out: Path, run: str, steps: int) -> float:
    """One training run through the CLI; its median logged speed after the first row."""
    args = ["train", str(corpus), "--max-steps", str(steps), "--log-every", "10", "--eval-every", "100000",
            "--val-chars", "2000", "--device", "cpu", "--precision", "fp32", "--out", str(out), "--run", run,
            "--force"]
    subprocess.run([*launch, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(r) for r in (out / run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["chars_per_s"] for r in rows if "chars_per_s" in r and r["step"] > 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    args = parser.parse_args()
    single = [str(BIN / "charrnn")]
    several = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(args.nproc), "-m", "charrnn", "--"]
    rates: dict[str, list[float]] = {"one": [], "several": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            rates["one"].append(chars_per_s(single, args.corpus, Path(tmp), f"one{i}", args.steps))
            rates["several"].append(chars_per_s(several, args.corpus, Path(tmp), f"several{i}", args.steps))
    one, several_best = max(rates["one"]), max(rates["several"])
    cores = len(os.sched_getaffinity(0))
    lines = [f"charrnn training under torchrun, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {cores} cores, "
             f"Python {platform.python_version()}",
             f"`python bench/distributed.py --steps {args.steps} --nproc {args.nproc}`: default 2x256 GRU, "
             f"--batch-size 32 --seq-len 64, fp32",
             "",
             "| launch | threads per process | train chars/s (runs) | vs one process |",
             "|---|---:|---:|---:|",
             f"| `charrnn train` | {cores} | {one:,.0f} ({', '.join(f'{r:,.0f}' for r in rates['one'])}) | 1.00x |",
             f"| `torchrun --nproc-per-node {args.nproc}` | {max(1, cores // args.nproc)} | {several_best:,.0f} "
             f"({', '.join(f'{r:,.0f}' for r in rates['several'])}) | {several_best / one:.2f}x |"]
    text = "\n".join(lines)
    print(text)
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(text + "\n\n")


if __name__ == "__main__":
    main()
