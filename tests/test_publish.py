"""Committed results that don't churn and that a clone can afford: the report writers are
deterministic (two runs, same bytes), reports carry no machine paths, executed notebooks
reference the saved figures instead of a second base64 copy, and results/ stays small."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from helpers import publish, report
from helpers.core import paths

#: results/ as git holds it, in bytes (issue #33: 59 MB before helpers.publish, ~15 MB asked).
RESULTS_BUDGET = 15_000_000


def test_machine_paths_become_project_relative():
    text = ('"checkpoint": "/work/main/results/cifake/models/seed_cnn.pt", '
            '"scratch": "/tmp/fresh/results/demo/models/gan.pt", '
            'DATA_SOURCE = &quot;/work/shared/data/cifake-v3.zip&quot; '
            '/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py '
            'see https://ipywidgets.readthedocs.io/en/stable/user_install.html and data/raw/x '
            'src="data:image/png;base64,/9j/work/main/results/"')
    out = publish.relative_paths(text)
    assert '"results/cifake/models/seed_cnn.pt"' in out
    assert '"results/demo/models/gan.pt"' in out  # a scratch folder's run reads like any other
    assert "&quot;../shared/data/cifake-v3.zip&quot;" in out  # as `make ... DATA_SOURCE=` gave it
    assert " .venv/lib/python3.11/" in out
    assert "https://ipywidgets.readthedocs.io/en/stable/user_install.html" in out  # URLs untouched
    assert "base64,/9j/work/main/results/" in out  # and base64 too
    assert publish.relative_paths(out) == out


def _figure(seed: int, dpi: int, photo: bool) -> bytes:
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(8, 4))
    if photo:
        coarse = Image.fromarray(rng.integers(0, 256, (20, 40, 3)).astype(np.uint8))
        ax.imshow(np.asarray(coarse.resize((400, 200), Image.BILINEAR)))  # smooth, many colours
    elif seed == 1:
        ax.plot(rng.normal(size=20).cumsum())
    else:
        ax.bar(range(5), rng.uniform(1, 2, size=5))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _executed_notebook(images: list[bytes]) -> str:
    stderr = ('<div class="jp-OutputArea-child">\n<div class="jp-OutputPrompt jp-OutputArea-prompt"></div>\n'
              '<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="application/vnd.jupyter.stderr" '
              'tabindex="0">\n<pre>/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: '
              'IProgress not found. Please update jupyter and ipywidgets.\n'
              '  from .autonotebook import tqdm as notebook_tqdm\n</pre>\n</div>\n</div>\n')
    imgs = "".join(f'<img alt="No description has been provided for this image" class="" '
                   f'src="data:image/png;base64,{base64.b64encode(b).decode()}">\n' for b in images)
    style = "<style type='text/css'>" + "/* nbconvert's theme */ .x{color:red}\n" * 400 + "</style>"
    return (f"<html><head>{style}</head><body>{stderr}<pre>DATA_SOURCE = &quot;/work/shared/data/x.zip"
            f"&quot;</pre>{imgs}</body></html>")


@pytest.fixture()
def executed_results(tmp_path) -> Path:
    root = tmp_path / "results" / "demo"
    (root / "figures").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "figures" / "photos.png").write_bytes(_figure(0, 150, photo=True))
    (root / "figures" / "curve.png").write_bytes(_figure(1, 150, photo=False))
    shown = [_figure(0, 100, photo=True), _figure(1, 100, photo=False), _figure(2, 100, photo=False)]
    (root / "notebooks" / "02_explore.html").write_text(_executed_notebook(shown))
    return root


def test_executed_notebooks_reference_their_figures_and_rerunning_changes_nothing(executed_results):
    before = sum(p.stat().st_size for p in executed_results.rglob("*") if p.is_file())
    publish.publish(executed_results)
    page = (executed_results / "notebooks" / "02_explore.html").read_text()
    assert 'src="../figures/photos.png"' in page and 'src="../figures/curve.png"' in page
    assert page.count("data:image/png") == 1  # the figure that was never saved stays embedded
    assert "TqdmWarning" not in page and "stderr" not in page
    assert "/work/" not in page and "&quot;../shared/data/x.zip&quot;" in page
    assert '<link rel="stylesheet" href="style-' in page and "<style" not in page
    with Image.open(executed_results / "figures" / "photos.png") as photo:
        assert photo.mode == "P" and round(photo.info["dpi"][0]) == publish.SHOWN_DPI
    after = {p: p.read_bytes() for p in sorted(executed_results.rglob("*")) if p.is_file()}
    assert sum(len(b) for b in after.values()) < before
    assert publish.publish(executed_results) == {"figures": 0, "texts": 0}
    assert after == {p: p.read_bytes() for p in sorted(executed_results.rglob("*")) if p.is_file()}


def test_the_index_is_the_same_bytes_when_built_twice(project_dirs):
    """`make all` twice leaves git clean: the index carries no build time (built on the
    committed demo results)."""
    _, results = project_dirs
    shutil.copytree(paths.ROOT / "results" / "demo", results / "demo",
                    ignore=shutil.ignore_patterns("*.png", "notebooks"))
    first = report.dataset_index("demo").read_bytes(), report.top_index().read_bytes()
    second = report.dataset_index("demo").read_bytes(), report.top_index().read_bytes()
    assert first == second
    assert b"UTC" not in first[0]


def test_committed_results_fit_a_clone():
    files = subprocess.run(["git", "ls-files", "-z", "results"], cwd=paths.ROOT, capture_output=True,
                           check=False).stdout.split(b"\0")
    files = [paths.ROOT / f.decode() for f in files if f]
    if not files:
        pytest.skip("not a git checkout")
    size = sum(f.stat().st_size for f in files if f.exists())
    assert size < RESULTS_BUDGET, (f"results/ holds {size / 1e6:.1f} MB in git (budget "
                                   f"{RESULTS_BUDGET / 1e6:.0f} MB): run `python -m helpers.publish results/<dataset>`")
