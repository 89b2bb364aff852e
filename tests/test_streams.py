"""Standard streams the shell closed (<&-, >&-, 2>&-), a full disk on stdout (/dev/full), readers that go away
(| head), and what lands on stderr when it is not a terminal. Real processes, through bash."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, make_text

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash to close the standard streams")
CHARRNN = f"{shlex.quote(sys.executable)} -m charrnn"
TRAIN = " ".join([*TINY, "--max-steps", "4", "--eval-every", "2"])
STATUS = '; s=("${PIPESTATUS[@]}"); echo; echo "status ${s[*]}"'  # a pipeline's exit statuses, after its output
TERMINAL_ENV = ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")


def env() -> dict[str, str]:
    """No variable that makes rich treat a pipe as a terminal."""
    base = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
    return {**base, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def sh(command: str, **kw) -> subprocess.CompletedProcess:
    """Run a bash command line in the current directory (the test's own); stdout and stderr as bytes."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([BASH, "-c", command], env=env(), timeout=120, **kw)


def one_error(proc: subprocess.CompletedProcess, code: int, start: str) -> str:
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == code, (proc.returncode, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(start), lines[0]
    return lines[0]


@pytest.fixture
def trained(origin, in_tmp) -> Path:
    """./tiny.txt and ./checkpoints/tiny, the newest (only) run: what sample, score and info pick by default."""
    shutil.copy(origin / "tiny.txt", in_tmp / "tiny.txt")
    shutil.copytree(origin / "checkpoints" / "tiny", in_tmp / "checkpoints" / "tiny")
    return in_tmp


@pytest.fixture
def text(in_tmp) -> Path:
    path = in_tmp / "small.txt"
    path.write_text(make_text(6000, seed=3), encoding="utf-8")
    return path


def run_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


# --- closed stdin and stdout: usage errors before any work -------------------------------------------------


@pytest.mark.parametrize("args", ["sample --prime - -n 5", "score", "train - --run piped"])
def test_closed_stdin_is_a_usage_error(trained, args):
    line = one_error(sh(f"{CHARRNN} {args} <&-"), 2, "error: stdin is closed; ")
    assert "pipe" in line


def test_training_on_a_closed_stdin_leaves_no_run_behind(text, in_tmp):
    proc = sh(f"{CHARRNN} train - {TRAIN} <&-")
    one_error(proc, 2, "error: stdin is closed; ")
    assert not (in_tmp / "checkpoints").exists()


@pytest.mark.parametrize("args", ["sample -n 100", "score small.txt", "score small.txt --per-line", "info"])
def test_closed_stdout_is_a_usage_error(trained, text, args):
    proc = sh(f"{CHARRNN} {args} >&-", stdout=subprocess.DEVNULL)
    one_error(proc, 2, "error: stdout is closed; ")


# --- a full disk on stdout ---------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", ["sample -n 5", "score small.txt --json", "score small.txt --per-line", "info",
                                  "--version", "corpus list"])
def test_full_disk_on_stdout_is_one_line(trained, text, args):
    proc = sh(f"{CHARRNN} {args} >/dev/full")
    line = one_error(proc, 1, "error: cannot write to stdout: No space left on device; ")
    assert proc.stdout == b""
    assert line.count("error:") == 1


# --- training does not need stdout, nor a stderr reader ----------------------------------------------------


def assert_trained(directory: Path) -> None:
    assert {"best.safetensors", "last.safetensors", "metrics.jsonl"} <= run_files(directory)
    result = cli("info", directory)
    assert result.exit_code == 0, result.stderr
    assert "step 12" in result.stdout


def test_a_stderr_reader_that_leaves_does_not_stop_training(text, in_tmp):
    """head takes the first 50 bytes and exits; every later progress line meets a closed pipe."""
    proc = sh(f"{CHARRNN} train small.txt {' '.join(TINY)} --max-steps 12 --eval-every 4 --log-every 1 "
              "2>&1 | head -c 50" + STATUS)
    out = proc.stdout.decode()
    assert out.rstrip().endswith("status 0 0"), out
    assert len(out.split("\nstatus")[0]) == 50, out
    assert_trained(in_tmp / "checkpoints" / "small")


def test_a_stderr_pipe_closed_after_the_first_line(text, in_tmp):
    args = [sys.executable, "-m", "charrnn", "train", "small.txt", *TINY, "--max-steps", "12", "--eval-every", "4",
            "--log-every", "1"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env())
    try:
        assert proc.stderr.readline()
        proc.stderr.close()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_trained(in_tmp / "checkpoints" / "small")


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-", "<&- >&- 2>&-"])
def test_training_with_closed_streams(text, in_tmp, redirect):
    proc = sh(f"{CHARRNN} train small.txt {' '.join(TINY)} --max-steps 12 --eval-every 4 {redirect}")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    if "2>&-" in redirect:
        assert proc.stderr == b""
    else:
        assert b"done: best val" in proc.stderr
    assert_trained(in_tmp / "checkpoints" / "small")


# --- stderr carries only what a script needs ---------------------------------------------------------------


def test_sample_is_silent_on_a_piped_stderr(trained):
    proc = sh(f"{CHARRNN} sample -n 20 --seed 1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert len(proc.stdout.decode()) == 20


def test_score_is_silent_on_a_piped_stderr(trained):
    proc = sh(f"{CHARRNN} score tiny.txt")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert proc.stdout.startswith(b"bits_per_char")
    per_line = sh(f"head -3 tiny.txt | {CHARRNN} score --per-line")
    assert per_line.returncode == 0 and per_line.stderr == b"", per_line.stderr.decode()
    assert len(per_line.stdout.splitlines()) == 3


def test_a_warning_still_reaches_a_piped_stderr(trained):
    proc = sh(f"{CHARRNN} sample -n 20 --seed 1 --prime Z")
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "'Z'" in lines[0], stderr
    assert "sampling from" not in stderr
    assert proc.stdout.decode().startswith("Z")


def with_terminal_stderr(args: list[str]) -> tuple[int, str, bytes]:
    """Run charrnn ARGS with stderr on a pseudo-terminal and stdout on a pipe: (exit, stderr text, stdout)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, env=env())
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read()
        code = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode("utf-8", "replace"), out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_is_told_which_checkpoint(trained):
    code, stderr, out = with_terminal_stderr(["sample", "-n", "20", "--seed", "1"])
    assert code == 0, stderr
    assert "sampling from" in stderr and "best.safetensors" in stderr
    assert len(out.decode()) == 20
    code, stderr, out = with_terminal_stderr(["score", "tiny.txt"])
    assert code == 0, stderr
    assert "scoring with" in stderr
    assert out.startswith(b"bits_per_char")


# --- a reader that closes stdout early ----------------------------------------------------------------------


def test_endless_sample_into_head_ends_quietly(trained):
    proc = sh(f"{CHARRNN} sample -n 0 2>err.txt | head -c 100" + STATUS)
    out = proc.stdout.decode()
    assert out.rstrip().endswith("status 0 0"), out
    assert len(out.split("\nstatus")[0].encode()) == 100
    assert Path("err.txt").read_bytes() == b""
