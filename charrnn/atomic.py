"""Atomic file replacement: a crash at any instant leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb", **open_kw):
    """Yield a file to write path's new content to. It is a temporary file in the same directory
    (named .NAME.*.tmp), flushed and fsynced, then renamed over path, then the directory is fsynced.
    On any error the temporary file is removed and path is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; files are as shareable as the user's umask says
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
