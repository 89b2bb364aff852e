#!/usr/bin/env python3
"""The README's two commands, needing nothing but Python 3.10+:

    python3 scripts/dev.py demo   # venv, install, python corpus, ~2 min of training, a sample
    python3 scripts/dev.py test   # venv, install with test extras, ruff, pytest

Both create ./.venv on first use and reuse it afterwards. torch is installed first and pinned to
2.13.0 (a CPU build where a local wheel exists; set CHARRNN_TORCH to install another spec, e.g.
"torch>=2.10"), so a bare `torch` requirement never pulls a multi-GB build by surprise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def sh(*args: str | Path, **kw) -> None:
    print("+", " ".join(map(str, args)), file=sys.stderr, flush=True)
    rc = subprocess.call([str(a) for a in args], cwd=ROOT, **kw)
    if rc:
        sys.exit(rc)


def install(extras: str = "") -> None:
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    pip = (PY, "-m", "pip", "install", "-q", "--disable-pip-version-check")
    has_torch = subprocess.call([PY, "-c", "import torch"], stderr=subprocess.DEVNULL) == 0
    if not has_torch:
        sh(*pip, os.environ.get("CHARRNN_TORCH", "torch==2.13.0"))
    sh(*pip, "-e", f".{extras}")


def demo() -> None:
    install()
    charrnn = BIN / "charrnn"
    sh(charrnn, "corpus", "get", "python")
    sh(charrnn, "train", "corpora/python.txt", "--run", "python", "--minutes", "2", "--val-frac", "0.02", "--force")
    sh(charrnn, "sample", "checkpoints/python", "-n", "600", "--temp", "0.8", "--prime", "def ")


def test() -> None:
    install("[test]")
    sh(PY, "-m", "ruff", "check", "charrnn", "tests", "bench", "scripts")
    sh(PY, "-m", "pytest", "-q", *sys.argv[2:])


if __name__ == "__main__":
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 {Path(__file__).relative_to(ROOT)} demo|test [pytest args]")
    commands[sys.argv[1]]()
