"""The package's architecture, checked: imports run one way down (pyproject.toml's import-linter contracts), no
import circles, and modules and functions of a readable size."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed beside this Python")


def lint(where: Path) -> subprocess.CompletedProcess:
    """lint-imports on the charrnn package under where, with the contracts of where/pyproject.toml."""
    return subprocess.run([str(LINT), "--config", "pyproject.toml", "--no-cache"], cwd=where, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_layers_and_has_no_circles():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("data/vocab.py", "from charrnn.training import trainer  # noqa", "Imports run one way down"),
    ("model/rnn.py", "from charrnn.generation import sample  # noqa", "Imports run one way down"),
    ("training/trainer.py", "from charrnn.analysis import score  # noqa", "Imports run one way down"),
    ("config.py", "import charrnn.cli  # noqa", "Imports run one way down"),
    ("data/vocab.py", "from charrnn.data import corpus  # noqa", "No import circles"),
])
def test_an_import_against_the_contracts_fails_the_check(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "charrnn", tmp_path / "charrnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "charrnn" / module
    target.write_text(target.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def body_lines(f: ast.FunctionDef) -> int:
    """A function's length from its first statement after the docstring: a Typer command's list of options is
    its declaration, not its work."""
    body = f.body[1:] if len(f.body) > 1 and isinstance(f.body[0], ast.Expr) and isinstance(
        f.body[0].value, ast.Constant) and isinstance(f.body[0].value.value, str) else f.body
    return f.end_lineno - body[0].lineno + 1


def test_modules_stay_under_300_lines_and_functions_under_about_60():
    too_long = []
    for path in sorted((ROOT / "charrnn").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > 300:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for f in functions(ast.parse(text)):
            length = body_lines(f)
            if length > 60:
                too_long.append(f"{name}: {f.name}() {length} lines")
    assert not too_long, too_long
