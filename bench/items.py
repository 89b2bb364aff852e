"""Lists of items, end to end through the CLI: train on makemore's 32,032 names with --items, then sample.

    python bench/items.py                 # --minutes 3 on ../shared/corpora/names.txt
    python bench/items.py --minutes 0.2   # a quick check that it runs

Prints, under a header naming the CPU: the held-out loss (nats per character, each name's end counted as a
character, as makemore counts its end token; makemore's README gives about 1.92 for its default transformer on
this list), then for `sample --items 1000 --temp 0.8` the shares of new names and of copies of training and
held-out names, and the wall time of that command and of `sample --items 1000 --new-only`, against the start-up
of `sample -n 1` on the same model. Rows are appended to bench/items.log. Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name  # noqa: E402

NAMES = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "names.txt"
LOG = Path(__file__).resolve().parent / "items.log"
MAKEMORE = 1.92  # makemore's default transformer, test loss on names.txt (its README)


def charrnn(*args: str) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of one charrnn command, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout, done.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--names", type=Path, default=NAMES)
    ap.add_argument("--flags", default="", help="more `charrnn train` flags, e.g. '--dropout 0.2'")
    args = ap.parse_args()
    if not args.names.exists():
        sys.exit(f"no {args.names}: this benchmark needs makemore's names.txt beside the repository")
    with tempfile.TemporaryDirectory(prefix="charrnn-items-") as work:
        run = Path(work) / "names"
        train_s, _, _ = charrnn("train", str(args.names), "--items", "--minutes", str(args.minutes), "--out", work,
                                "--run", "names", *shlex.split(args.flags))
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
        best, steps = min(vals.values()), rows[-1]["step"]
        plain_s, _, err = charrnn("sample", str(run), "--items", "1000", "--temp", "0.8", "--seed", "1")
        counts = re.search(r"drew ([\d,]+) items, wrote ([\d,]+); ([\d,]+) new, ([\d,]+) cop(?:y|ies) of training "
                           r"items, ([\d,]+) of held-out items", err)
        drawn, _, new, train, held = (int(c.replace(",", "")) for c in counts.groups())
        new_s, new_out, new_err = charrnn("sample", str(run), "--items", "1000", "--temp", "0.8", "--seed", "1",
                                          "--new-only")
        start_s = min(charrnn("sample", str(run), "-n", "1", "--seed", "1")[0] for _ in range(3))
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}, {cpu_name()}, `python bench/items.py --minutes {args.minutes:g}"
        f"{' --flags ' + shlex.quote(args.flags) if args.flags else ''}`\n",
        "| measure | charrnn | reference |", "|---|---:|---:|",
        f"| held-out loss, nats/char (end of name counted) after {args.minutes:g} min, {steps:,} steps | "
        f"{best:.4f} | makemore transformer {MAKEMORE} |",
        f"| `sample --items 1000 --temp 0.8`: new / copies of training / of held-out | {new / drawn:.1%} / "
        f"{train / drawn:.1%} / {held / drawn:.1%} of {drawn:,} drawn | |",
        f"| wall time: `sample --items 1000 --temp 0.8` | {plain_s:.2f} s | start-up (`sample -n 1`) {start_s:.2f} s |",
        f"| wall time: `sample --items 1000 --new-only` ({new_out.count(chr(10)):,} written; "
        f"{new_err.strip().splitlines()[-1]}) | {new_s:.2f} s | {new_s - start_s:.2f} s over start-up (target <= 5) |",
        f"| training wall time | {train_s:.0f} s | |",
        f"| held-out loss by step | {', '.join(f'{k}: {v:.3f}' for k, v in vals.items())} | |",
    ]
    print("\n".join(lines))
    with LOG.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
