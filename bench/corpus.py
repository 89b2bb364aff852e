"""Corpus preparation speed and memory: generate corpora of 10 MB, 100 MB and 1 GB, prepare each in a fresh process.

    python bench/corpus.py                  # 10 MB, 100 MB, 1 GB of code, prose, CJK and mixed text
    python bench/corpus.py --sizes 10,100   # skip the 1 GB corpus (needs about 2 GB of free temp space)

For every corpus a child process runs exactly what `charrnn train` runs before training (sources.resolve and
corpus.load: pass 1 vocab + hash, pass 2 encode to the id cache), first with an empty cache ("build"), then
again with the cache in place ("reuse": stat + content hash check + memory map). Peak RSS is the child's
ru_maxrss, from getrusage(RUSAGE_CHILDREN) in a bare launcher process; it includes the interpreter, numpy and
rich, shown alone in the "import only" row. "build MB/s" is wall-clock; "MB per CPU s" divides by the child's
CPU time less the import-only child's, the rate on a core of its own (this machine's 2 cores are shared, so the
load average is printed too). The corpus was just written, so it is read from the page cache: this measures
preparation, not the disk. Everything is written to a temporary directory, deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1_000_000  # sizes are decimal megabytes
CHILD = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from charrnn.data import corpus
from charrnn.data import sources
t1 = time.perf_counter()
if sys.argv[1] != "-":
    cache = Path(sys.argv[2])
    c = corpus.load(sources.resolve([sys.argv[1]], None, cache), cache)
    print(json.dumps({"import_s": t1 - t0, "prepare_s": time.perf_counter() - t1, "chars": len(c.ids),
                      "vocab": len(c.vocab), "dtype": c.ids.dtype.name}))
else:
    print(json.dumps({"import_s": t1 - t0}))
"""


def words(kind: str, rng: random.Random) -> list[str]:
    """Made-up tokens for four shapes of corpus.

    code: ASCII only, like a source tree. prose: European text, mostly ASCII with accented letters (about 1% of
    characters) and now and then an emoji. cjk: Chinese-like text, nearly every character 3 bytes of UTF-8.
    mixed, a worst case: accented Latin, CJK and emoji on every line, about 30% of characters non-ASCII.
    """
    if kind == "code":
        alphabet = "abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        tokens = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) for _ in range(2000)]
        return tokens + ["(", ")", "{", "}", ";", "=", "->", "==", "    ", "#include", "return", "\n", "\n\t"] * 50
    if kind == "prose":
        plain = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPRSTUVW"
        tokens = ["".join(rng.choice(plain + "éèàüöçñ"[: rng.randint(0, 7) // 6]) for _ in range(rng.randint(1, 9)))
                  for _ in range(3000)]
        return tokens + [",", ".", ";", "—", "«", "»", "\n", "\n\n"] * 60 + ["🙂", "é", "ß", "œ"] * 3
    cjk = ["".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    if kind == "cjk":
        return cjk + ["，", "。", "「", "」", "\n"] * 100
    accented = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzéèàüößçñøåæœ") for _ in range(rng.randint(2, 9)))
                for _ in range(2000)]
    return accented + cjk[:300] + [",", ".", "—", "«", "»", "🙂", "🎭", "\n"] * 40


def generate(path: Path, megabytes: int, kind: str) -> None:
    """Write about `megabytes` MB: a 4 MB block of random tokens, repeated with a varying line prefix."""
    rng = random.Random(megabytes)
    vocab = words(kind, rng)
    sep = "" if kind == "cjk" else " "
    block = sep.join(rng.choice(vocab) for _ in range(1_500_000)).encode()[: 4 * MB]
    block = block[: len(block.decode("utf-8", "ignore").encode())]  # end on a whole character
    written, i = 0, 0
    with open(path, "wb") as f:
        while written < megabytes * MB:
            part = f"\n// part {i}\n".encode() + block[: megabytes * MB - written]
            part = part[: len(part.decode("utf-8", "ignore").encode())]
            f.write(part)
            written, i = written + len(part), i + 1


# Linux carries a process's peak RSS across exec, so a child started straight from this (larger) process would
# report this process's peak. A bare launcher starts it instead and reports getrusage(RUSAGE_CHILDREN).
LAUNCHER = """import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(proc.stderr)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, proc.stdout.decode())
"""


def child(args: list[str]) -> tuple[dict, float]:
    """Run the preparation in a fresh interpreter; (its JSON report with cpu_s added, its peak RSS in MB)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, sys.executable, "-c", CHILD, *args],
                          capture_output=True, env=env, text=True)
    rc, maxrss_kb, cpu_s, report = proc.stdout.split(" ", 3)
    if proc.returncode or rc != "0":
        sys.exit(f"preparation failed: {proc.stderr}")
    return {**json.loads(report), "cpu_s": float(cpu_s)}, int(maxrss_kb) / 1024  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--kinds", default="code,prose,cjk,mixed", help="code, prose, cjk, mixed (see words())")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        base, base_rss = child(["-"])
        print(f"import only: {base['import_s']:.2f} s, peak RSS {base_rss:.0f} MB", file=sys.stderr)
        for kind in args.kinds.split(","):
            for size in map(int, args.sizes.split(",")):
                path, cache = Path(tmp, f"{kind}-{size}.txt"), Path(tmp, f"cache-{kind}-{size}")
                generate(path, size, kind)
                mb = path.stat().st_size / 1e6
                build, build_rss = child([str(path), str(cache)])
                reuse, reuse_rss = child([str(path), str(cache)])
                rows.append((kind, mb, build, build_rss, reuse, reuse_rss))
                print(f"{kind} {mb:,.0f} MB: {mb / build['prepare_s']:.0f} MB/s, {build_rss:.0f} MB", file=sys.stderr)
                path.unlink()
                for f in cache.iterdir():
                    f.unlink()
    report(rows, base, base_rss)


def report(rows: list, base: dict, base_rss: float) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"charrnn corpus preparation, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average {load} at the end), Python {platform.python_version()}, numpy {np.__version__}")
    print()
    print("| corpus | size | chars | vocab | ids | build s | build MB/s | MB per CPU s | build peak RSS "
          "| reuse s | reuse peak RSS |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for kind, mb, b, b_rss, r, r_rss in rows:
        cpu = b["cpu_s"] - base["cpu_s"]  # the process's CPU time less starting Python and importing
        print(f"| {kind} | {mb:,.0f} MB | {b['chars']:,} | {b['vocab']:,} | {b['dtype']} | {b['prepare_s']:.2f} | "
              f"{mb / b['prepare_s']:,.0f} | {mb / cpu:,.0f} | {b_rss:.0f} MB | {r['prepare_s']:.2f} "
              f"| {r_rss:.0f} MB |")
    print(f"| import only | | | | | | | | {base_rss:.0f} MB | | |")
    print()
    print("command: python " + " ".join([sys.argv[0], *sys.argv[1:]]))


if __name__ == "__main__":
    main()
