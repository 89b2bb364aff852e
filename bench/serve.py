"""`charrnn serve` against `charrnn sample` processes, measured in one run: K concurrent streaming clients of N
characters each (K = 1, 8, 32; N = 500), their total characters per second and the time to each response's first
character; then the same work done by K `charrnn sample -n N` processes started at once.

    python bench/serve.py                        # the default model (a 2x256 GRU, trained a few steps here)
    python bench/serve.py --checkpoint RUN       # a model of yours (speed depends on its shape, not its training)
    python bench/serve.py --quick                # a tiny model, few characters: checks that the bench runs
    python bench/serve.py --screenshot bench/serve-page.png --checkpoint RUN   # only the page, for the README

Targets (issue 26): the first character under 50 ms for one client (a `charrnn sample` process: about 1.5 s); with
32 clients, total throughput at least 8x one client's. The clients are one asyncio loop in this process speaking
plain HTTP/1.1 (no client library's parsing in the figures); the server runs as `charrnn serve` in its own process,
with its default threads. Prints a table and appends it to bench/serve.log (not with --quick). Nothing else may run
on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import SHAKESPEARE, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "bench" / "serve.log"
TINY = ["--hidden-size", "16", "--embed-size", "8", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16"]


def charrnn(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], check=True, **kw)


def model(args, work: Path) -> Path:
    """The checkpoint to serve: --checkpoint, or one trained here (the default model's shape, or a tiny one)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    corpus = SHAKESPEARE
    if args.quick or not corpus.is_file():
        corpus = work / "text.txt"
        alphabet = "".join(chr(c) for c in range(32, 97))  # 65 characters, as tiny Shakespeare has
        corpus.write_text("".join(alphabet[(i * 7919) % 65] for i in range(200_000)), encoding="utf-8")
    sizes = TINY if args.quick else []
    charrnn("train", corpus, *sizes, "--max-steps", 4 if args.quick else 20, "--eval-every", 1000, "--val-chars",
            2000, "--out", work / "checkpoints", "--run", "bench", capture_output=True)
    return work / "checkpoints" / "bench"


def about(args, checkpoint: Path) -> str:
    if args.checkpoint:
        return args.checkpoint
    return "a tiny 1x16 GRU" if args.quick else "the default 2x256 GRU, trained 20 steps here"


class Served:
    """`charrnn serve CHECKPOINT --port 0` in its own process."""

    def __init__(self, checkpoint: Path, extra: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", str(checkpoint), "--port", "0",
                                      "--max-requests", "256", "--max-chars", "1000000", *extra],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            raise SystemExit(f"charrnn serve did not start: {line}{self.proc.stderr.read()}")
        self.port = int(found[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=60)


async def body(reader: asyncio.StreamReader):
    """The pieces of a chunked HTTP body, as they arrive."""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def client(port: int, chars: int, seed: int) -> tuple[float, float, int]:
    """(seconds to the first character, seconds to the end, characters) of one streamed completion."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({"prompt": "", "max_tokens": chars, "seed": seed, "stream": True}).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
    status = await reader.readline()
    assert b" 200 " in status, status
    while (await reader.readline()).strip():
        pass
    first, got, buffer = None, 0, b""
    async for piece in body(reader):
        buffer += piece
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            data = event.removeprefix(b"data: ")
            if data != b"[DONE]":
                text = "".join(c["text"] for c in json.loads(data)["choices"])
                got += len(text)
                if text and first is None:
                    first = time.perf_counter() - start
    writer.close()
    return first, time.perf_counter() - start, got


async def process(checkpoint: Path, chars: int, seed: int) -> tuple[float, float, int]:
    """The same for one `charrnn sample -n chars` process, from its start."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "charrnn", "sample", str(checkpoint), "-n",
                                                str(chars), "--seed", str(seed), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    head = await proc.stdout.read(1)
    first = time.perf_counter() - start
    rest = await proc.stdout.read()
    await proc.wait()
    return first, time.perf_counter() - start, len((head + rest).decode("utf-8", "replace"))


async def together(make, k: int) -> dict:
    start = time.perf_counter()
    runs = await asyncio.gather(*(make(i) for i in range(k)))
    wall = time.perf_counter() - start
    firsts = sorted(r[0] for r in runs)
    return {"chars": sum(r[2] for r in runs), "wall": wall, "rate": sum(r[2] for r in runs) / wall,
            "first_median": statistics.median(firsts), "first_max": firsts[-1]}


def row(k: int, how: str, r: dict) -> str:
    return (f"| {k} | {how} | {r['chars']:,} | {r['rate']:,.0f} | {r['first_median'] * 1000:,.0f} | "
            f"{r['first_max'] * 1000:,.0f} | {r['wall']:.2f} |")


def measure(args, checkpoint: Path) -> list[str]:
    served = Served(checkpoint, args.serve_args)
    lines, serve, sample = [], {}, {}
    try:
        asyncio.run(together(lambda i: client(served.port, 20, i), 2))  # warm: the first requests pay once
        for k in args.clients:
            serve[k] = asyncio.run(together(lambda i: client(served.port, args.chars, i), k))
            lines.append(row(k, "charrnn serve", serve[k]))
            print(lines[-1], flush=True)
    finally:
        served.stop()
    for k in args.clients:
        sample[k] = asyncio.run(together(lambda i: process(checkpoint, args.chars, i), k))
        lines.append(row(k, "charrnn sample processes", sample[k]))
        print(lines[-1], flush=True)
    low, high = min(args.clients), max(args.clients)
    gain = serve[high]["rate"] / serve[low]["rate"]
    lines += ["", f"serve, {high} clients against {low}: {gain:.1f}x the characters per second (target >= 8x); first "
              f"character with {low} client(s) {serve[low]['first_median'] * 1000:.0f} ms (target < 50 ms) against "
              f"{sample[low]['first_median']:.2f} s for a sample process"]
    lines += [f"serve against sample processes, {k} at once: {serve[k]['rate'] / sample[k]['rate']:.1f}x the "
              "characters per second" for k in args.clients]
    return lines


def screenshot(checkpoint: Path, path: Path, serve_args: list[str]) -> None:
    """The page in headless Chromium, a prime typed and its text streamed in, saved as path."""
    from playwright.sync_api import expect, sync_playwright

    served = Served(checkpoint, serve_args)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHARRNN_CHROMIUM", "/usr/bin/chromium"),
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                              "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 960, "height": 720})
            page.goto(f"http://127.0.0.1:{served.port}/")
            page.wait_for_selector("#model option", state="attached")
            page.fill("#prime", "ROMEO:\n")
            page.fill("#length", "600")
            page.fill("#seed", "7")
            page.click("#go")
            expect(page.locator("#status")).to_contain_text("characters in", timeout=60_000)
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        served.stop()
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="model file or run to serve (default: the default model, trained here)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per round (default 1,8,32)")
    parser.add_argument("--chars", type=int, default=500, help="characters per response (default 500)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 and 4 clients of 50 characters, no log")
    parser.add_argument("--screenshot", type=Path, help="measure nothing: save the page with streamed text here")
    parser.add_argument("--serve-args", default="", help="more options for charrnn serve, e.g. '--precision bf16'")
    args = parser.parse_args()
    args.clients = [1, 4] if args.quick else sorted(int(k) for k in args.clients.split(","))
    args.chars = 50 if args.quick else args.chars
    args.serve_args = args.serve_args.split()
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-serve-") as work:
        checkpoint = model(args, Path(work))
        if args.screenshot:
            return screenshot(checkpoint, args.screenshot, args.serve_args)
        import torch

        head = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
                f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}",
                f"python bench/serve.py {' '.join(sys.argv[1:])}".rstrip() + f" (model: {about(args, checkpoint)})", "",
                "| clients | how | characters | chars/s | first char median (ms) | first char max (ms) | wall (s) |",
                "|---:|---|---:|---:|---:|---:|---:|"]
        print("\n".join(head), flush=True)
        lines = measure(args, checkpoint)
        print("\n".join(lines[len(args.clients) * 2:]))
        if not args.quick:
            with LOG.open("a", encoding="utf-8") as log:
                log.write("\n".join(head + lines) + "\n\n")


if __name__ == "__main__":
    main()
