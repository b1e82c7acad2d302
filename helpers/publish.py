"""Committed results that a clone can afford and that do not churn: ``python -m helpers.publish FOLDER...``.

Run by ``make index`` on ``results/<dataset>`` after every step (and by hand on any results
folder: ``results/benchmarks``); rerunning it changes nothing (each rewrite recognises its own
output), so it can be re-applied to whatever is committed later. It rewrites, in place:

* **figures** (``*.png``): as :func:`helpers.core.notebook.save_fig` now saves them
  (:func:`helpers.core.notebook.published_png`): a 256-colour palette, photo grids at the
  100 dpi they are shown at; for figures saved otherwise or before.
* **executed notebooks** (``notebooks/*.html``): an embedded image that is a saved figure
  (same picture, matched on a small greyscale thumbnail, :func:`match_figure`) becomes a
  relative reference to that file instead of a second base64 copy, so the page stays readable
  offline next to its figures; other embedded images are re-encoded like the figures; the
  ~260 KB of nbconvert's stylesheet moves to one shared ``notebooks/style-<hash>.css``;
  tqdm's "IProgress not found" warning is dropped.
* **every text result** (HTML, JSON, CSV): absolute paths of the machine that ran it become
  paths relative to the project (``results/cifake/models/seed_cnn.pt``, a data copy beside the
  project as ``../shared/data/cifake-v3.zip``, as ``make ... DATA_SOURCE=`` was given), so
  a report reads the same from every clone and scratch folder (:func:`relative_paths`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .core import paths
from .core.notebook import SHOWN_DPI, png_bytes, published_png, shrink_image
from .core.repro import atomic_path

#: Largest mean absolute difference (0-255, 32x32 greyscale thumbnails) at which an embedded
#: image is taken for a saved figure; the same figure at two dpis differs by ~1-3.
MATCH_TOLERANCE = 6.0
#: ... and at full size (resampling text and lines costs ~3-9), the best at most this share of
#: the runner-up's difference (measured on the committed reports: matches 0.2-0.66, look-alikes 0.85-1).
FULL_TOLERANCE, UNIQUE_RATIO = 12.0, 0.7
TEXT_SUFFIXES = (".html", ".json", ".csv", ".md", ".txt")

_EMBEDDED = re.compile(r'<img alt="([^"]*)" class="" src="data:image/png;base64,([A-Za-z0-9+/=\s]+)"')
_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.DOTALL)
# anchored at a line's start or a <pre>: an unanchored [^\n<]* rescans base64 lines (quadratic)
_TQDM = re.compile(r"(?:^|(?<=<pre>))[^\n<]*TqdmWarning: IProgress not found[^\n<]*\n"
                   r"(?:\s+from \.autonotebook import[^\n<]*\n)?", re.MULTILINE)
_EMPTY_STDERR = re.compile(r'<div class="jp-OutputArea-child">\s*<div class="jp-OutputPrompt jp-OutputArea-prompt">'
                           r'</div>\s*<div class="jp-RenderedText jp-OutputArea-output" data-mime-type='
                           r'"application/vnd.jupyter.stderr" tabindex="0">\s*<pre></pre>\s*</div>\s*</div>\s*')
# where an absolute path of a run starts: not inside a word, a URL, a relative path or base64
_START = r"(?<![\w.~/:+=-])"
_ROOT_HINT = re.compile(_START + r"(/[\w.@+-]+(?:/[\w.@+-]+)*?)/(?:results|data/raw|data/processed|\.venv)/")


# --------------------------------------------------------------------------- figures

def shrink_png(path: Path) -> bool:
    """Re-encode the figure at ``path`` in place (:func:`helpers.core.notebook.published_png`);
    True if it changed."""
    data = path.read_bytes()
    new = published_png(data)
    if new == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(new)
    return True


def _thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)


def match_figure(image: Image.Image, figures: dict[Path, tuple[float, np.ndarray]]) -> Path | None:
    """The saved figure that ``image`` shows, or None when none is clearly it.

    Candidates share its aspect ratio (within 3 %) and its 32x32 greyscale thumbnail (mean
    absolute difference under :data:`MATCH_TOLERANCE`); each is then resampled to ``image``'s
    size and compared pixel by pixel: the best must differ by under :data:`FULL_TOLERANCE` and
    by under :data:`UNIQUE_RATIO` of the runner-up, so that look-alikes (confusion matrices
    that differ in their numbers) stay embedded rather than point at the wrong file. Limit: a
    figure that was never saved but looks like one saved figure (same axes, same size, similar
    lines) could be taken for it; the reports' own figures are all saved.
    ``figures``: path -> (width/height, thumbnail), as :func:`_figure_index` builds it.
    """
    aspect, thumb = image.width / image.height, _thumbnail(image)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    scored = []
    for path, (other_aspect, other) in figures.items():
        if abs(other_aspect / aspect - 1) > 0.03 or float(np.abs(other - thumb).mean()) > MATCH_TOLERANCE:
            continue
        with Image.open(path) as saved:
            pixels = np.asarray(saved.convert("L").resize(image.size, Image.BILINEAR), dtype=np.float32)
        scored.append((float(np.abs(pixels - grey).mean()), path))
    scored.sort()
    if not scored or scored[0][0] > FULL_TOLERANCE:
        return None
    if len(scored) > 1 and scored[0][0] > UNIQUE_RATIO * scored[1][0]:
        return None
    return scored[0][1]


def _figure_index(folder: Path) -> dict[Path, tuple[float, np.ndarray]]:
    index = {}
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            index[path] = (image.width / image.height, _thumbnail(image))
    return index


# --------------------------------------------------------------------------- text results

_DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]*)")


def _prose(text: str) -> list[str]:
    """``text`` split so that the odd items are embedded data (base64), left untouched."""
    return _DATA_URI.split(text)


def find_roots(text: str) -> set[str]:
    """Project folders of the machines a text was written on: what precedes ``/results/``,
    ``/data/raw|processed/`` or ``/.venv/`` in its absolute paths (``/work/main``, ``/tmp/fresh``)."""
    return {root for part in _prose(text)[::2] for root in _ROOT_HINT.findall(part)}


def relative_paths(text: str, roots: set[str] | None = None) -> str:
    """``text`` with absolute paths under a project root (``roots``, this project's
    :data:`helpers.core.paths.ROOT` and those :func:`find_roots` sees) made relative to it, and
    paths beside it (a sibling folder, ``/work/shared/...``) written as ``../shared/...``."""
    roots = set(roots or ()) | find_roots(text) | {str(paths.ROOT.resolve())}
    parents = {os.path.dirname(r) for r in roots} - {"", "/"}
    rules = [(re.compile(_START + re.escape(root) + "/"), "") for root in sorted(roots, key=len, reverse=True)]
    rules += [(re.compile(_START + re.escape(parent) + r"/(?=[\w.@+-])"), "../")
              for parent in sorted(parents, key=len, reverse=True)]
    parts = _prose(text)
    for i in range(0, len(parts), 2):
        for pattern, replacement in rules:
            parts[i] = pattern.sub(replacement, parts[i])
    return "".join(parts)


def _css_link(html_path: Path, match: re.Match) -> str:
    css = match.group(1)
    if len(css) < 10_000:  # a notebook's own small style: keep it inline
        return match.group(0)
    name = f"style-{hashlib.sha256(css.encode()).hexdigest()[:12]}.css"
    target = html_path.parent / name
    if not target.exists():
        _write_text(target, css)
    return f'<link rel="stylesheet" href="{name}">'


def _embedded(html_path: Path, figures: dict, match: re.Match) -> str:
    alt, data = match.group(1), base64.b64decode(match.group(2))
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        saved = match_figure(image, figures)
        if saved is not None:
            rel = Path(os.path.relpath(saved, html_path.parent)).as_posix()
            return f'<img alt="{saved.stem}" class="" src="{rel}"'
        small = shrink_image(image)
    if small is None:
        return match.group(0)
    encoded = base64.b64encode(png_bytes(small, SHOWN_DPI)).decode()
    return f'<img alt="{alt}" class="" src="data:image/png;base64,{encoded}"'


def publish_html(path: Path, figures: dict, roots: set[str]) -> str:
    """The published text of the executed notebook at ``path`` (see the module's docstring)."""
    text = path.read_text(encoding="utf-8")
    text = _EMPTY_STDERR.sub("", _TQDM.sub("", text))
    text = _STYLE.sub(lambda m: _css_link(path, m), text)
    text = _EMBEDDED.sub(lambda m: _embedded(path, figures, m), text)
    return relative_paths(text, roots)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def publish(folder: str | os.PathLike) -> dict[str, int]:
    """Publish every result under ``folder`` in place; returns counts of what changed."""
    folder = Path(folder)
    done = {"figures": 0, "texts": 0}
    for png in sorted(folder.rglob("*.png")):
        done["figures"] += shrink_png(png)
    texts = sorted(p for p in folder.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    roots: set[str] = set()
    for path in texts:
        roots |= find_roots(path.read_text(encoding="utf-8", errors="replace"))
    figures = _figure_index(folder)
    for path in texts:
        old = path.read_text(encoding="utf-8", errors="surrogateescape")
        if path.suffix == ".html" and path.parent.name == "notebooks":
            new = publish_html(path, figures, roots)
        else:
            new = relative_paths(old, roots)
        if new != old:
            _write_text(path, new)
            done["texts"] += 1
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="results folders, e.g. results/demo")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not Path(folder).is_dir():
            parser.error(f"{folder}: no such results folder")
        done = publish(folder)
        print(f"published {folder}: {done['figures']} figures re-encoded, {done['texts']} texts rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
