"""Results index: ``results/<dataset>/index.html``, ``results/index.html`` and the README's table.

Everything shown is read from the files the notebooks wrote (metrics CSV/JSON, figures,
rendered notebooks); nothing is typed in by hand. Run by ``make index`` (part of ``make all``):
``python -m helpers.report DATASET``.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .core import paths
from .core.repro import atomic_path
from .core.selection import best_by_validation
from .data.datasets import DATASETS
from .evaluation import columns
from .evaluation.text import saved_summary

#: Figure folders in reading order, with the heading each gets in the index.
FIGURE_SECTIONS = (
    ("figures", "The data"), ("curves", "Training curves"), (".", "Evaluation"),
    ("evaluation", "Evaluation details"), ("generated_images", "GAN samples"),
    ("gradcam", "Grad-CAM"),
)
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
STEP_COMMANDS = {
    "demo": "make all",
    "sneakers": "make all DATASET=sneakers DATA_SOURCE=../shared/data/sneakers",
    "cifake": "make all DATASET=cifake",
}


def load_metrics(dataset: str) -> pd.DataFrame | None:
    """The evaluation notebook's ``performance_metrics.csv`` for ``dataset``, if any."""
    path = paths.RESULTS / dataset / "performance_metrics.csv"
    return pd.read_csv(path) if path.exists() else None


def _table(rows, shown: list[columns.Column], first: tuple[str, list[str]] | None = None) -> str:
    """An HTML table of ``rows`` (metrics rows) in the ``shown`` columns, under their headings;
    ``first``: (heading, cells as HTML) of a leading column."""
    head = ([f"<th>{html.escape(first[0])}</th>"] if first else []) + [
        f"<th>{_keep(c.label)}</th>" for c in shown]
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td class='text'>{first[1][i]}</td>"] if first else []
        cells += [f"<td class='{'text' if c.fmt == 'text' else 'num'}'>{_keep(c.text(row))}</td>"
                  for c in shown]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{''.join(head)}</tr>{''.join(body)}</table>"


def _keep(text: str) -> str:
    """``text`` as HTML where a wrapping heading keeps a number with its unit ("95 %") and a
    parenthesis on one line ("(95 % CI)")."""
    text = html.escape(text).replace(" %", "&nbsp;%")
    return re.sub(r"\([^()]*\)", lambda m: m.group(0).replace(" ", "&nbsp;"), text)


def metrics_html(metrics: pd.DataFrame) -> str:
    """The metrics table of a dataset's index: the columns declared for it, every model."""
    return _table([row for _, row in metrics.iterrows()], columns.shown(columns.INDEX))


#: Figure name (a regular expression; ``{}`` in the caption: its group, a model's name) ->
#: caption and a sentence on what it shows, from ``helpers/figure_notes.csv``; the first that
#: matches applies.
_NOTES = Path(__file__).with_name("figure_notes.csv").read_text(encoding="utf-8").splitlines()
FIGURE_NOTES = tuple(tuple(row) for row in csv.reader(_NOTES[1:]))


def figure_note(stem: str) -> tuple[str, str]:
    """The caption and the sentence of the figure saved as ``stem``.png (:data:`FIGURE_NOTES`)."""
    for pattern, caption, sentence in FIGURE_NOTES:
        found = re.fullmatch(pattern, stem)
        if found:
            return caption.format(*found.groups()), sentence
    return stem.replace("_", " "), ""


def _figures_html(root: Path) -> str:
    parts = []
    for folder, title in FIGURE_SECTIONS:
        pngs = sorted((root / folder).glob("*.png"))
        if folder == "generated_images" and len(pngs) > 4:  # per-epoch grids: first, last, final
            pngs = pngs[:1] + pngs[-3:]
        if not pngs:
            continue
        cells = []
        for p in pngs:
            src, (caption, sentence) = p.relative_to(root).as_posix(), figure_note(p.stem)
            cells.append(f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption)}" '
                         f'loading="lazy"></a><figcaption><b>{html.escape(caption)}</b> '
                         f"{html.escape(sentence)}</figcaption></figure>")
        parts.append(f"<h2>{title}</h2><div class='grid'>{''.join(cells)}</div>")
    return "".join(parts)


def _findings_html(root: Path) -> str:
    """Notebook 05's closing paragraph, from the saved metrics (:func:`saved_summary`); none,
    with a note, from a file older than the summary's fields."""
    path = root / "performance_metrics.json"
    try:
        finding = saved_summary(json.loads(path.read_text())) if path.is_file() else None
    except (KeyError, TypeError, IndexError) as error:
        print(f"{paths.shown(path)}: no findings on the index (an older file? {error!r})")
        finding = None
    if not finding:
        return ""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(finding))
    return f"<h2>Findings</h2><p class='findings'>{text}</p>"


STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 6px}
th{background:#f3f3f3;vertical-align:bottom;text-align:center}td{text-align:right}td.num{text-align:right;white-space:nowrap}
td.text{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;width:380px}
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:13px;margin-top:4px}
.findings{max-width:75ch}.demo{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:4px}
code{background:#f5f5f5;padding:1px 4px}</style>"""


def _style() -> str:
    """:data:`STYLE` on one line, as the pages carry it."""
    return STYLE.replace("\n", "")


def dataset_index(dataset: str) -> Path:
    """Write ``results/<dataset>/index.html`` and return its path."""
    root = paths.results_dir(dataset)
    report_path = root / "data_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    spec = DATASETS.get(dataset)
    title = report.get("title") or (spec.title if spec else dataset)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if report.get("is_demo") or (spec and spec.is_demo):
        body.append("<p class='demo'><b>DEMO</b>: synthetic data built offline so the pipeline "
                    "runs anywhere. These numbers are not a benchmark.</p>")
    body.append(_findings_html(root))
    metrics = load_metrics(dataset)
    if metrics is not None:
        body.append("<h2>Test metrics</h2>" + metrics_html(metrics))
    if report.get("counts"):
        counts = pd.DataFrame(report["counts"]).T
        body.append("<h2>Images per split</h2>" + counts.to_html(border=0))
    body.append(f"<p>Reproduce: <code>{html.escape(STEP_COMMANDS.get(dataset, 'make all DATASET=' + dataset))}</code>"
                f" · data fingerprint <code>{html.escape(str(report.get('data_fingerprint', '?')))}</code></p>")
    # no build time: the page is a function of the files it shows, so a rerun leaves git clean
    notebooks = sorted((root / "notebooks").glob("*.html"))
    if notebooks:
        links = "".join(f"<li><a href='notebooks/{p.name}'>{html.escape(p.stem)}</a></li>" for p in notebooks)
        body.append(f"<h2>Executed notebooks</h2><ul>{links}</ul>")
    body.append(_figures_html(root))
    page = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>{_style()}{''.join(body)}"
    return _write(root / "index.html", page)


def best_rows() -> list[tuple[str, pd.Series, bool]]:
    """Per dataset, the model chosen on *validation* data, as notebook 05 chooses it
    (:func:`helpers.core.selection.best_by_validation`: accuracy, then the lower loss), as
    ``(dataset, row, True)``; never on the test split. A metrics file without validation figures
    (an older one) is listed, every model as ``(dataset, row, False)``, never ranked."""
    rows = []
    folders = sorted(p for p in paths.RESULTS.iterdir() if p.name in DATASETS) if paths.RESULTS.exists() else []
    for folder in folders:
        metrics = load_metrics(folder.name)
        if metrics is None or metrics.empty or "accuracy" not in metrics:
            continue
        records = [row for _, row in metrics.iterrows()]
        best = best_by_validation(records, _validation_figures)
        rows += [(folder.name, best, True)] if best is not None else [(folder.name, r, False) for r in records]
    return rows


def _validation_figures(row: pd.Series) -> dict:
    """A metrics row's validation figures under the names of :func:`validation_rank`."""
    return {"val_acc": row.get("val_accuracy", np.nan), "val_loss": row.get("val_loss", np.inf)}


def _dataset_label(dataset: str, ranked: bool) -> str:
    label = f"{dataset} (DEMO)" if DATASETS.get(dataset) and DATASETS[dataset].is_demo else dataset
    return label if ranked else f"{label} (not ranked: no validation figures)"


def top_index() -> Path:
    """Write ``results/index.html``: one line per dataset, linking to its index."""
    items = []
    for folder in sorted(p for p in paths.RESULTS.iterdir() if p.name in DATASETS and (p / "index.html").exists()):
        items.append(f"<li><a href='{folder.name}/index.html'>{folder.name}</a>: "
                     f"{html.escape(DATASETS[folder.name].title)}</li>")
    table = ""
    rows = best_rows()
    if rows:
        table = ("<h2>Best model per dataset</h2><p>Each dataset's detector with the highest validation "
                 "accuracy (never chosen on test), scored on its test split. A dataset's page leads "
                 "with its findings, then every model and the figures.</p>" + _best_table(rows))
    page = (f"<!doctype html><meta charset='utf-8'><title>Results</title>{_style()}"
            f"<h1>AI-generated image detection: results</h1>{table}<h2>Datasets</h2><ul>{''.join(items)}</ul>")
    return _write(paths.RESULTS / "index.html", page)


def _best_table(rows) -> str:
    links = [f"<a href='{d}/index.html'>{html.escape(_dataset_label(d, ranked))}</a>" for d, _, ranked in rows]
    return _table([r for _, r, _ in rows], columns.shown(columns.INDEX), ("dataset", links))


def worst_case(dataset: str, model: str) -> str:
    """The model's lowest accuracy over notebook 05's robustness protocol
    (``results/<dataset>/robustness.csv``) and its condition, or "–" without one."""
    path = paths.RESULTS / dataset / "robustness.csv"
    if not path.is_file():
        return "–"
    table = pd.read_csv(path)
    rows = table[(table["model"] == model) & (table["condition"] != "clean")]
    if rows.empty:
        return "–"
    worst = rows.loc[rows["accuracy"].idxmin()]
    return f"{100 * worst['accuracy']:.1f} % ({worst['condition']})"


def readme_table() -> str:
    """Markdown table of the best model per dataset, from the metrics files, in the columns
    declared for the README; the worst case is the lowest accuracy under notebook 05's
    robustness protocol (a test subset)."""
    shown = columns.shown(columns.README)
    head = ["dataset", *(c.label for c in shown), "worst case, post-processed", "reproduce"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dataset, row, ranked in best_rows():
        cells = [_dataset_label(dataset, ranked), *(c.text(row) for c in shown),
                 worst_case(dataset, row["model"]),
                 f"`{STEP_COMMANDS.get(dataset, 'make all DATASET=' + dataset)}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(readme: Path | None = None) -> bool:
    """Replace the README's generated results table; True if the file changed."""
    readme = readme or paths.ROOT / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _: f"{README_START}\n{readme_table()}\n{README_END}", text)
    if new != text:
        _write(readme, new)
    return new != text


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", help="datasets whose index to rebuild (default: all)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--readme-only", action="store_true", help="only the README's results table")
    args = parser.parse_args(argv)
    if not args.readme_only:
        names = args.datasets or [p.name for p in paths.RESULTS.iterdir() if p.name in DATASETS]
        for name in names:
            print("wrote", dataset_index(name))
        print("wrote", top_index())
    if not args.no_readme and update_readme():
        print("updated the results table in README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
