"""Fetch a file over HTTP(S) with a progress bar on stderr, check its SHA-256, and write it atomically."""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from charrnn.atomic import replacing
from charrnn.errors import CharrnnError

BLOCK = 1 << 16  # bytes read from the connection at a time
TIMEOUT_S = 30  # seconds without an answer before giving up


def by_hand(url: str, out: Path, sha256: str) -> str:
    return f"fetch it by hand: curl -fL -o {out} {url} && sha256sum {out} (expect {sha256})"


def fetch(url: str, out: Path, sha256: str, default: str | None = None) -> None:
    """Download url to out; out appears only once the whole file is there and its SHA-256 matches.
    default: the corpus's usual address, suggested when another url sends the wrong file."""
    try:
        with replacing(out) as f:
            try:
                digest = copy(url, f)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
                raise CharrnnError(f"cannot download {url} ({reason}); {by_hand(url, out, sha256)}") from None
            if digest != sha256:
                fix = by_hand(url, out, sha256)
                if default and url != default:
                    fix = "this --url serves another file: leave --url out to use the default source, or " + by_hand(
                        default, out, sha256)
                raise CharrnnError(f"{url} sent a file whose SHA-256 is {digest[:16]}..., not the expected "
                                   f"{sha256[:16]}...; nothing was written; {fix}")
    except OSError as e:
        raise CharrnnError(f"cannot write {out}: {e.strerror}; choose another -o PATH") from None


def copy(url: str, f) -> str:
    """Stream url's body into f with a progress bar (terminals only); returns its SHA-256."""
    from tqdm import tqdm

    err = sys.stderr  # the bar only at a terminal; data modules do not use the console
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False,
                  disable=err is None or not err.isatty(), file=err) as bar:
            while block := response.read(BLOCK):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()
