"""Loss curves of runs from their metrics.jsonl: a figure (matplotlib, the optional `plot` extra) or a text curve."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.atomic import writing
from charrnn.console import info
from charrnn.errors import CharrnnError, UsageError

BITS = 1 / math.log(2)  # nats -> bits
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass
class Curves:
    """One run's losses in bits per character, each point (step, minutes, bits)."""

    name: str
    train: list[tuple[int, float, float]] = field(default_factory=list)
    val: list[tuple[int, float, float]] = field(default_factory=list)


def read(run_dir: Path) -> Curves:
    """The curves of a run directory; a row cut short by a crash is skipped, and so is a non-finite loss."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror}; give a run directory charrnn train wrote") from None
    curves = Curves(run_dir.name)
    for line in lines:
        try:
            row = json.loads(line)
            point = (int(row["step"]), float(row["elapsed_s"]) / 60)
            for key, series in (("train_loss", curves.train), ("val_loss", curves.val)):
                loss = row.get(key)  # null (or NaN, in files of older versions): skipped steps, not drawn
                if isinstance(loss, int | float) and math.isfinite(loss):
                    series.append((*point, loss * BITS))
        except (ValueError, KeyError, TypeError):
            continue
    if not curves.train and not curves.val:
        raise CharrnnError(f"{path} has no loss rows yet; plot the run once it has logged a step")
    return curves


def figure(runs: list[Curves], out, fmt: str = "png") -> None:
    """Training (thin) and validation (thick, dots) loss against steps and against minutes, one colour a run;
    written to out (a path or a binary file) as fmt."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        for ax, x in zip(axes, (0, 1), strict=True):
            if run.train:
                ax.plot([p[x] for p in run.train], [p[2] for p in run.train], color=colour, lw=0.8, alpha=0.6,
                        label=f"{run.name} train")
            if run.val:
                ax.plot([p[x] for p in run.val], [p[2] for p in run.val], color=colour, lw=2, marker="o", ms=3,
                        label=f"{run.name} validation")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("minutes of training")
    axes[0].set_ylabel("loss, bits per character")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out, dpi=120, format=fmt)
    plt.close(fig)


def spark(values: list[float], low: float, high: float, width: int) -> str:
    """values as a block each from low (▁) to high (█), the first and the last always among them; more than width
    values are resampled to width, evenly spaced over the whole series."""
    n = min(width, len(values))
    picked = [values[round(i * (len(values) - 1) / (n - 1)) if n > 1 else 0] for i in range(n)]
    span = high - low or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in picked)


def text(runs: list[Curves], width: int = 48) -> str:
    """A compact curve a line per run and split: first value, blocks over the steps, last value, best."""
    series = [(r, kind, pts) for r in runs for kind, pts in (("train", r.train), ("val", r.val)) if pts]
    values = [p[2] for _, _, pts in series for p in pts if math.isfinite(p[2])]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    label = max(len(r.name) for r in runs)
    lines = [f"loss in bits per character, {low:.3f} (▁) to {high:.3f} (█), steps left to right"]
    for run, kind, pts in series:
        bits = [p[2] for p in pts]
        lines.append(f"{run.name:<{label}} {kind:<5} {bits[0]:6.3f} {spark(bits, low, high, width)} {bits[-1]:.3f} "
                     f"(best {min(bits):.3f}, step {pts[-1][0]:,}, {pts[-1][1]:.1f} min)")
    return "\n".join(lines)


def check_output(out: Path) -> None:
    """The figure's file: a format matplotlib writes, in a directory that exists."""
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"-o {out}: give a .png, .svg or .pdf file name")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: directory {out.parent} does not exist; create it first")


def find_run(target: Path | None, root: Path = Path("checkpoints")) -> Path:
    """A run directory from what the user named: a run directory, a file in one (a checkpoint), or a folder of
    runs (its newest by metrics.jsonl), or a bare run name under root (a path that exists wins); None: the newest
    run under root."""
    # a run's name, perhaps: as model.files.by_name, not imported from there (plot starts without torch)
    bare = target is not None and not target.exists() and len(target.parts) == 1
    target = target if target is not None else root
    if bare and (root / target).exists():
        target, bare = root / target, False
    if target.is_file():
        target = target.parent
    if (target / "metrics.jsonl").is_file():
        return target
    runs = list(target.glob("*/metrics.jsonl")) if target.is_dir() else []
    if not runs:
        where = "no runs there" if target.exists() else "no such file or directory"
        also = f", and no {root / target}" if bare else ""
        raise CharrnnError(f"{target}: {where}{also}; name a run directory or a run under {root}/ (charrnn train "
                           "writes OUT/RUN/metrics.jsonl)")
    return max(runs, key=lambda f: f.stat().st_mtime).parent


def plot(*, runs: list[Path], output: Path | None) -> None:
    """`charrnn plot`: the runs' curves as a figure (matplotlib), written atomically. Without matplotlib, the text
    curve on stderr and how to install it: a success when no -o was given, else an error (no figure written)."""
    if output is not None:
        check_output(output)
    dirs = [find_run(r) for r in runs or [None]]
    curves = [read(d) for d in dirs]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        info(text(curves))
        if output is not None:
            raise CharrnnError(f"matplotlib is not installed, so {output} was not written (the text curve is "
                               "above); install it with: pip install 'charrnn[plot]'") from None
        info("for a figure (PNG, SVG or PDF) instead: pip install 'charrnn[plot]'")
        return
    output = output if output is not None else dirs[0] / "loss.png"
    with writing(output) as tmp:
        figure(curves, tmp, output.suffix[1:].lower())
    info(f"wrote {output}")
