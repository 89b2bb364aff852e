"""Files charrnn writes: atomic replacement (a crash at any instant leaves the old file or the new one, never half),
and temporary files tagged with their writer, so the ones a killed process left behind can be told apart from
those a live one is still writing and removed safely, even in a directory that several runs share."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from charrnn.errors import CharrnnError

HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"
TAG = re.compile(r"~(\d+)@([A-Za-z0-9.-]+)~")  # ~PID@HOST~ in a temporary file's name
OTHER_HOST_STALE_S = 24 * 3600  # a temporary file tagged by another host is stale after a day unchanged


def temp_file(directory: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """(fd, path) of a new file named PREFIX~PID@HOST~RANDOM SUFFIX, with the permissions the umask gives
    (mkstemp makes 0600; charrnn's files are as shareable as the user's other files)."""
    fd, name = tempfile.mkstemp(prefix=f"{prefix}~{os.getpid()}@{HOST}~", suffix=suffix, dir=directory)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, Path(name)


def stale(path: Path) -> bool:
    """Whether a temporary file charrnn made (its name carries the ~PID@HOST~ tag) has lost its writer: the
    process has exited (same host), or, from another host, the file has not changed for a day. A name without
    the tag is not charrnn's and never stale."""
    tag = TAG.search(path.name)
    if not tag:
        return False
    if tag[2] == HOST:
        try:
            os.kill(int(tag[1]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError):
            return False
        return False
    try:
        return time.time() - path.stat().st_mtime > OTHER_HOST_STALE_S
    except OSError:
        return False


def remove_stale(directory: Path, pattern: str) -> None:
    """Remove the temporary files matching pattern in directory whose writers are gone."""
    for path in directory.glob(pattern):
        if stale(path):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb", **open_kw):
    """Yield a file to write path's new content to. It is a temporary file in the same directory
    (named .NAME~PID@HOST~*.tmp), flushed and fsynced, then renamed over path, then the directory is fsynced.
    On any error the temporary file is removed and path is left as it was. Temporary files for path that killed
    writers left behind are removed first."""
    remove_stale(path.parent, f".{glob.escape(path.name)}~*.tmp")
    fd, tmp = temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def writing(path: Path, mode: str = "wb", **open_kw):
    """replacing(path), for a file the user named: a failure (disk full, no permission) is one line naming it."""
    try:
        with replacing(path, mode, **open_kw) as f:
            yield f
    except OSError as e:
        raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
