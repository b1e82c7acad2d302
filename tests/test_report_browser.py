"""The results index in a real browser: headless Chromium at 1300 px, driven by Playwright,
opens results/index.html and every results/<dataset>/index.html, built in a temporary folder
from the committed metrics, and measures them. No table may run past the window, nor out of
the page's column (thirteen columns of raw names once did, which no string test sees).

Needs Debian's ``chromium`` and the ``playwright`` package, as tests/test_app_browser.py does;
skipped with the reason when either is missing.
"""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from helpers import report
from helpers.core import paths
from helpers.data.datasets import DATASETS

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
from tests.test_app_browser import CHROMIUM, CHROMIUM_FLAGS, WINDOW

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")]
COMMITTED = paths.ROOT / "results"
#: what the index reads of a dataset's results; figures and notebooks are stood in for
READ = ("performance_metrics.csv", "performance_metrics.json", "data_report.json", "robustness.csv")


def _placeholder_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 500), (200, 200, 200)).save(buffer, format="PNG")  # wider than its frame
    return buffer.getvalue()


@pytest.fixture
def pages(project_dirs) -> list:
    """The index pages of every committed dataset, rebuilt under a temporary results/."""
    _, results = project_dirs
    png = _placeholder_png()
    datasets = [p for p in sorted(COMMITTED.iterdir()) if p.name in DATASETS]
    if not datasets:
        pytest.skip("no committed results/<dataset>/ to build the index from")
    for source in datasets:
        target = results / source.name
        for path in source.rglob("*"):
            if path.name in READ or path.suffix == ".png" or (path.suffix == ".html" and path.parent.name == "notebooks"):
                (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                if path.name in READ:
                    shutil.copyfile(path, target / path.relative_to(source))
                else:
                    (target / path.relative_to(source)).write_bytes(png if path.suffix == ".png" else b"")
    assert report.main(["--no-readme"]) == 0
    return [results / "index.html"] + [results / p.name / "index.html" for p in datasets]


def test_no_index_table_is_wider_than_a_1300_px_window(pages, tmp_path):
    measure = """() => ({page: document.documentElement.scrollWidth,
                         body: Math.ceil(document.body.getBoundingClientRect().right),
                         tables: [...document.querySelectorAll('table')].map(t => [
                             t.querySelector('th') ? t.querySelector('th').textContent : '',
                             Math.ceil(t.getBoundingClientRect().right), t.scrollWidth, t.clientWidth])})"""
    seen = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=WINDOW)
            for path in pages:
                page.goto(path.as_uri())
                seen[path] = page.evaluate(measure)
                page.screenshot(path=str(tmp_path / f"{path.parent.name}.png"), full_page=True)
        finally:
            browser.close()
    for path, found in seen.items():
        assert found["tables"], f"{path}: no table"
        assert found["page"] <= WINDOW["width"], f"{path} scrolls sideways: {found} (screenshots {tmp_path})"
        for first, right, scroll, client in found["tables"]:
            assert right <= WINDOW["width"] and scroll <= client, (
                f"{path}: the table that starts with {first!r} runs past the window: {found} (screenshots {tmp_path})")
            assert right <= found["body"], (
                f"{path}: the table that starts with {first!r} runs out of the page's column: {found}")
