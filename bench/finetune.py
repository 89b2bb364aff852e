"""Fine-tuning against training from scratch on a small text of another style, through the CLI.

    python bench/finetune.py                       # 5 minutes of tiny Shakespeare, then 2 minutes each way
    python bench/finetune.py --flags "" --flags "--dropout 0.2" --flags "--lr 3e-3"   # a (b) row each
    python bench/finetune.py --quick               # seconds instead of minutes: checks the bench end to end
    python bench/finetune.py --source OUT/shakespeare --text A.txt --text B.txt   # that model; A then B as the text
    python bench/finetune.py --pretrain-steps 800 --steps 600 --flags "" --flags "--lr 3e-3"   # equal steps, not time

1. Pre-trains the default model on tiny Shakespeare (../shared/corpora/tinyshakespeare.txt) for --pretrain
   minutes (or --pretrain-steps steps).
2. The small text: the first 50,000 characters of Python's own help topics (pydoc_data.topics, the text that
   `help("assert")` and the other topics print, in the order of their names), from the running interpreter: English
   prose about code, with code in it; no download (or, with --text, the first 50,000 characters of the files
   given). Its last 10% is held out (--val-frac 0.1, the default).
3. Trains on it for --minutes each (or --steps: equal steps, to compare settings apart from their speed): (a) from
   scratch, (b) `--init-from` the Shakespeare model (charrnn's fine-tuning defaults, or one row per --flags string
   of extra `charrnn train` flags), with an evaluation every --eval-every steps, all else charrnn's defaults.

For each run it prints one row: the best and the final held-out loss (nats per character), steps, the whole
command's wall time, and for (b) when it first reached (a)'s final held-out loss (training seconds, and as a share
of (a)'s); then a sample of each (`charrnn sample --seed 1 --temp 0.8`). The issue's targets: (b) at least 0.2
nats/char under (a), reaching (a)'s final loss in under a quarter of the time. Rows are appended to
bench/finetune.log as they come (not with --quick). Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
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

LOG = Path(__file__).resolve().parent / "finetune.log"
SMALL_CHARS = 50_000  # characters of the small text
SAMPLE = ["--seed", "1", "--temp", "0.8", "-n", "400"]
QUICK = {"pretrain": 0.4, "minutes": 0.15, "eval_every": 10}  # --quick: seconds, not minutes


def small_text(path: Path, files: list[Path] | None) -> str:
    """Write the small text (module docstring, 2.; or the files given, one after another) to path; returns what it
    is, for the table's header."""
    if files:
        text = "".join(f.read_text(encoding="utf-8") for f in files)[:SMALL_CHARS]
        path.write_text(text, encoding="utf-8")
        return f"the first {len(text):,} characters of {' + '.join(str(f) for f in files)}"
    from pydoc_data.topics import topics

    text = "".join(topics[name] for name in sorted(topics))[:SMALL_CHARS]
    path.write_text(text, encoding="utf-8")
    version = ".".join(map(str, sys.version_info[:3]))
    return f"the first {len(text):,} characters of pydoc_data.topics (Python {version}'s help topics, by name)"


def charrnn(*args: str) -> float:
    """Run `charrnn ARGS` (quietly); its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "charrnn", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def evaluations(run: Path) -> list[dict]:
    """The run's validation rows (step, elapsed_s, val_loss), in order."""
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r.get("val_loss") is not None]


def budget(minutes: float, steps: int | None) -> list[str]:
    return ["--max-steps", str(steps)] if steps else ["--minutes", str(minutes)]


def train(text: Path, out: Path, run: str, budget: list[str], eval_every: int, *extra: str) -> dict:
    """One `charrnn train` run; its best and final held-out loss, steps, elapsed training time, wall time."""
    wall = charrnn("train", str(text), *budget, "--eval-every", str(eval_every), "--out", str(out), "--run", run,
                   "--force", *extra)
    vals = evaluations(out / run)
    return {"best": min(r["val_loss"] for r in vals), "final": vals[-1]["val_loss"], "steps": vals[-1]["step"],
            "elapsed_s": vals[-1]["elapsed_s"], "wall_s": wall, "vals": vals}


def reached(vals: list[dict], loss: float) -> float | None:
    """Training seconds at the first evaluation at or under loss, or None."""
    return next((r["elapsed_s"] for r in vals if r["val_loss"] <= loss), None)


def sample(out: Path, run: str) -> str:
    result = subprocess.run([sys.executable, "-m", "charrnn", "sample", str(out / run), *SAMPLE], check=True,
                            capture_output=True, text=True)
    return result.stdout


def log(line: str, to_file: bool) -> None:
    if to_file:
        speed.log(line, LOG)
    else:
        print(line, flush=True)


def row(label: str, r: dict, scratch: dict | None) -> str:
    when = ""
    if scratch is not None:
        t = reached(r["vals"], scratch["final"])
        when = "never" if t is None else f"{t:.0f} s ({t / scratch['elapsed_s']:.0%})"
    return (f"| {label} | {r['best']:.4f} | {r['final']:.4f} | {r['steps']:,} | {r['wall_s']:.0f} | {when} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=float, default=5.0, metavar="MINUTES", help="minutes on Shakespeare")
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of each run on the small text")
    parser.add_argument("--pretrain-steps", type=int, help="steps on Shakespeare instead of --pretrain minutes")
    parser.add_argument("--steps", type=int, help="steps of each run on the small text instead of --minutes")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations of every run")
    parser.add_argument("--flags", action="append", default=None, help="extra train flags of one (b) row "
                        "(repeatable; default: one row, \"\", charrnn's fine-tuning defaults)")
    parser.add_argument("--quick", action="store_true", help=f"seconds: {QUICK}; nothing appended to the log")
    parser.add_argument("--keep", type=Path, metavar="OUT", help="keep the runs in OUT (else a temporary one)")
    parser.add_argument("--text", type=Path, action="append", metavar="FILE", help="the small text: these files "
                        "one after another (repeatable; default: Python's help topics)")
    parser.add_argument("--source", type=Path, metavar="RUN", help="a Shakespeare run pre-trained before (e.g. "
                        "OUT/shakespeare of a --keep run): step 1 is skipped")
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        sys.exit(f"{SHAKESPEARE} not found: this benchmark needs the tiny-shakespeare corpus")
    if args.quick:
        args.pretrain, args.minutes, args.eval_every = QUICK["pretrain"], QUICK["minutes"], QUICK["eval_every"]
    to_file = not args.quick
    pretrain, each = budget(args.pretrain, args.pretrain_steps), budget(args.minutes, args.steps)
    with tempfile.TemporaryDirectory(prefix="charrnn-finetune-") as work:
        out = args.keep or Path(work)
        out.mkdir(parents=True, exist_ok=True)
        text = out / ("small.txt" if args.text else "topics.txt")
        about = small_text(text, args.text)
        log(f"# {time.strftime('%Y-%m-%d %H:%M')} python {shlex.join(['bench/finetune.py', *sys.argv[1:]])}", to_file)
        made = f"pre-trained `{shlex.join(pretrain)}`" if args.source is None else f"pre-trained before ({args.source})"
        log(f"# {cpu_name()}, {len(os.sched_getaffinity(0))} threads; {made} on {SHAKESPEARE.name} (the default "
            f"model), then `{shlex.join(each)}` each on {about}, last 10% held out", to_file)
        shakespeare = args.source or out / "shakespeare"
        if args.source is None:
            charrnn("train", str(SHAKESPEARE), *pretrain, "--out", str(out), "--run", "shakespeare", "--force")
        source = evaluations(shakespeare)
        log(f"# Shakespeare model: best held-out {min(r['val_loss'] for r in source):.4f} nats/char at step "
            f"{source[-1]['step']:,}", to_file)
        log("| run | best held-out nats/char | final | steps | wall s | reached (a)'s final loss |", to_file)
        log("|---|---:|---:|---:|---:|---:|", to_file)
        scratch = train(text, out, "scratch", each, args.eval_every)
        log(row("(a) from scratch", scratch, None), to_file)
        runs = {"scratch": scratch}
        configs = args.flags if args.flags is not None else [""]
        for k, flags in enumerate(configs, 1):
            name = "finetuned" + (f"-{k}" if len(configs) > 1 else "")
            runs[name] = train(text, out, name, each, args.eval_every, "--init-from", str(shakespeare),
                               *shlex.split(flags))
            log(row(f"(b) `--init-from` `{flags or '(defaults)'}`", runs[name], scratch), to_file)
        for name, r in runs.items():
            if name != "scratch":
                gain = scratch["best"] - r["best"]
                log(f"# {name}: {gain:+.4f} nats/char against (a) (target >= 0.2)", to_file)
        for name in runs:
            log(f"\nsample of {name} (charrnn sample {shlex.join(SAMPLE)}):\n```\n{sample(out, name)}\n```", to_file)


if __name__ == "__main__":
    main()
