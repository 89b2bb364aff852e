"""The page `charrnn serve` shows at /, in a real browser: headless Chromium (Debian's chromium, driven by playwright)
loads it, picks a model, submits a prime and watches the text stream in. Skipped where no Chromium is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")

CHROMIUM = next((p for p in (os.environ.get("CHARRNN_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]  # nothing but the page's own requests


def browse(url: str, act, screenshot: Path | None = None):
    """Opens url in headless Chromium and runs act(page); every request the page makes is recorded and must stay on
    the server (the page works offline: no external script, style or font)."""
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            result = act(page)
            if screenshot:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert requests and all(r.startswith(url.rstrip("/")) or r.startswith("data:") for r in requests), requests
    assert not errors, errors  # a Content-Security-Policy refusal shows here
    return result


def test_the_page_streams_text_from_a_prime_and_shows_it_as_text(origin, tmp_path):
    from test_serve import Server

    s = Server("checkpoints/tiny", cwd=origin)
    prime = "<b>bold</b> & <script>alert(1)</script>"

    def act(page):
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        page.fill("#prime", prime)
        page.fill("#length", "300")
        page.click("#go")
        sync_api.expect(page.locator("#status")).to_contain_text("characters in", timeout=60_000)
        return {"prime": page.text_content("#shown-prime"), "text": page.text_content("#text"),
                "status": page.text_content("#status"), "tags": page.eval_on_selector_all("#out *", "e => e.length"),
                "about": page.text_content("#about")}

    try:
        shown = browse(s.url + "/", act, tmp_path / "page.png")
    finally:
        assert s.stop() == 143
    assert shown["prime"] == prime and shown["tags"] == 2  # the prime as text: no element made of it
    assert len(shown["text"]) == 300 and shown["status"].startswith("300 characters in")
    assert shown["about"].startswith("gru 1x16")
    assert (tmp_path / "page.png").stat().st_size > 1000
    assert any(line.startswith("POST /v1/completions 200 tiny 300 chars") for line in s.lines)
