"""Kill training at random moments, again and again; count checkpoints left unreadable (target: 0).

    python bench/kill_loop.py [--kills 50] [--seed 0]

Each round starts (or resumes) a real `charrnn train` process that saves every step, waits a random
0-1.5 s after its first checkpoint, sends SIGINT, SIGTERM or SIGKILL, then loads last.safetensors.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.errors import CheckpointError
from charrnn.model import files as checkpoint

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
TINY = "--hidden-size 32 --embed-size 16 --num-layers 1 --batch-size 8 --seq-len 32".split()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tally = {s.name: [0, 0] for s in SIGNALS}  # signal -> [kills, unreadable]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("".join(rng.choice("abcdefgh \n") for _ in range(100_000)), encoding="utf-8")
        last = Path(tmp) / "runs" / "k" / "last.safetensors"
        for i in range(args.kills):
            sig = rng.choice(SIGNALS)
            cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--out", f"{tmp}/runs", "--run", "k",
                   "--max-steps", "1000000", "--save-every", "1", "--eval-every", "50"]
            proc = subprocess.Popen(cmd + (["--resume"] if last.exists() else []),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seen = last.stat().st_mtime_ns if last.exists() else 0
            while not last.exists() or last.stat().st_mtime_ns == seen:  # wait for this round's first save
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 1.5))
            proc.send_signal(sig)
            proc.wait()
            tally[sig.name][0] += 1
            try:
                checkpoint.load(last)
            except CheckpointError:
                tally[sig.name][1] += 1
                last.unlink()
            print(f"kill {i + 1}/{args.kills}: {sig.name}, exit {proc.returncode}", file=sys.stderr)
    print(f"{'signal':<8} {'kills':>6} {'unreadable':>11}")
    for name, (kills, bad) in tally.items():
        print(f"{name:<8} {kills:>6} {bad:>11}")
    total_bad = sum(b for _, b in tally.values())
    print(f"{'total':<8} {args.kills:>6} {total_bad:>11}   ({total_bad / args.kills:.0%} unreadable)")
    print(f"command: python bench/kill_loop.py --kills {args.kills} --seed {args.seed}")


if __name__ == "__main__":
    main()
