"""`charrnn corpus list/get`: the catalogue, and downloads against a local HTTP server (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SHAKESPEARE, cli

from charrnn.data.corpora import SHAKESPEARE_SHA256, SHAKESPEARE_URL

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of an HTTP server on 127.0.0.1 serving that directory."""
    servers = []

    def start(directory: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def files_under(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def test_list_shows_tinyshakespeare_with_size_and_source():
    result = cli("corpus", "list")
    assert result.exit_code == 0
    line = next(row for row in result.stdout.splitlines() if row.startswith("tinyshakespeare\t"))
    assert "1,115,394 characters" in line and SHAKESPEARE_URL in line
    assert SHAKESPEARE_URL == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@needs_shakespeare
def test_get_downloads_verifies_and_writes_under_corpora(tmp_path, serve):
    url = serve(SHAKESPEARE.parent) + "/" + SHAKESPEARE.name
    result = cli("corpus", "get", "tinyshakespeare", "--url", url)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "corpora" / "tinyshakespeare.txt"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    assert "wrote corpora/tinyshakespeare.txt (1,115,394 characters)" in result.stderr
    assert files_under(tmp_path / "corpora") == ["tinyshakespeare.txt"]  # no temporary file left
    (tmp_path / "elsewhere").mkdir()  # -o makes no directories
    result = cli("corpus", "get", "tinyshakespeare", "--url", url, "-o", tmp_path / "elsewhere" / "ts.txt")
    assert result.exit_code == 0 and (tmp_path / "elsewhere" / "ts.txt").read_bytes() == out.read_bytes()


def test_wrong_checksum_leaves_nothing_behind(tmp_path, serve):
    impostor = tmp_path / "www" / "input.txt"
    impostor.parent.mkdir()
    impostor.write_text("To be, or not to be\n" * 1000, encoding="utf-8")
    result = cli("corpus", "get", "tinyshakespeare", "--url", serve(impostor.parent) + "/input.txt")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    digest = hashlib.sha256(impostor.read_bytes()).hexdigest()
    assert f"SHA-256 is {digest[:16]}" in lines[0] and "nothing was written" in lines[0]
    assert "fetch it by hand: curl -fL -o corpora/tinyshakespeare.txt" in lines[0] and SHAKESPEARE_SHA256 in lines[0]
    assert "leave --url out to use the default source" in lines[0] and SHAKESPEARE_URL in lines[0]
    assert files_under(tmp_path / "corpora") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_is_one_line_saying_how_to_fetch_by_hand(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/input.txt"
    result = cli("corpus", "get", "tinyshakespeare", "--url", url)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot download {url} (")
    assert f"fetch it by hand: curl -fL -o corpora/tinyshakespeare.txt {url}" in lines[0]
    assert files_under(tmp_path / "corpora") == []


def test_a_failed_download_keeps_the_file_already_there(tmp_path, serve):
    out = tmp_path / "corpora" / "tinyshakespeare.txt"
    out.parent.mkdir()
    out.write_text("an earlier copy\n", encoding="utf-8")
    result = cli("corpus", "get", "tinyshakespeare", "--url", serve(tmp_path) + "/missing.txt")
    assert result.exit_code == 1 and "(File not found)" in result.stderr
    assert out.read_text(encoding="utf-8") == "an earlier copy\n" and files_under(out.parent) == [out.name]


def test_url_applies_only_to_downloaded_corpora():
    result = cli("corpus", "get", "python", "--url", "http://127.0.0.1:9/x")
    assert result.exit_code == 2 and "--url applies to tinyshakespeare" in result.stderr


def test_corpus_get_into_a_directory_writes_name_txt_there_readable_by_the_umask(tmp_path):
    out = tmp_path / "somewhere"
    out.mkdir()
    old = os.umask(0o022)
    try:
        result = cli("corpus", "get", "python", "-o", out)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["python.txt"]  # no temporary file left beside it
    assert (out / "python.txt").stat().st_mode & 0o777 == 0o644
