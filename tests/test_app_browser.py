"""The app in a real browser: headless Chromium at 1300 px, driven by Playwright, uploads two
images and measures the result cards. Each card's three pictures must sit side by side inside
their columns and end before the probability and the verdict begin (at a fixed 224-px width
they once ran over them, which no AppTest can see).

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` package; skipped
with the reason when either is missing.
"""

from __future__ import annotations

import io
import itertools
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import train_tiny_detector

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")]
# what the machine's closed network needs (connections Chromium makes at start are refused)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = {"width": 1300, "height": 1400}


def _png(rng: np.random.Generator, height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`make app`'s command on a free port, over a tiny trained demo detector."""
    from tests.test_app import app_server

    root = tmp_path_factory.mktemp("browser")
    with app_server(train_tiny_detector(root, "demo"), root) as (address, health, log):
        assert health is not None, f"no answer in 90 s:\n{log.read_text(errors='replace')}"
        yield address


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]


def test_result_cards_lay_out_cleanly_at_1300_px(server, tmp_path):
    rng = np.random.default_rng(0)
    files = [{"name": name, "mimeType": "image/png", "buffer": _png(rng, h, w)}
             for name, h, w in (("wide.png", 300, 400), ("tall.png", 400, 240))]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=WINDOW)
            page.goto(server)
            page.wait_for_selector('input[type="file"]', state="attached", timeout=120_000)
            page.set_input_files('input[type="file"]', files)
            page.wait_for_function(
                """() => document.querySelectorAll('[data-testid="stMetric"]').length === 2
                     && document.querySelectorAll('[data-testid="stImage"] img').length === 6
                     && [...document.querySelectorAll('[data-testid="stImage"] img')].every(i => i.complete)""",
                timeout=120_000)
            page.screenshot(path=str(tmp_path / "app_1300px.png"), full_page=True)
            metrics = [m.bounding_box() for m in page.locator('[data-testid="stMetric"]').all()]
            pictures = [i.bounding_box() for i in page.locator('[data-testid="stImage"] img').all()]
            main = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        finally:
            browser.close()
    assert "Kind: trained from scratch" in sidebar and "On sources it never saw" in sidebar
    for metric in metrics:
        # the card's pictures: those level with its probability
        row = sorted((p for p in pictures if abs(p["y"] - metric["y"]) < 40), key=lambda p: p["x"])
        assert len(row) == 3, (metric, pictures)
        for left, right in itertools.pairwise(row):
            assert not _overlap(left, right), f"pictures overlap: {left} {right}"
        assert all(p["x"] + p["width"] <= metric["x"] for p in row), (
            f"a picture runs over the probability: {row} vs {metric} (screenshot {tmp_path})")
        assert all(p["width"] >= 100 for p in row), f"pictures too small to read: {row}"
        assert metric["x"] + metric["width"] <= main["x"] + main["width"] + 1
