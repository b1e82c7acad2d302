"""Results index: ``results/<dataset>/index.html``, ``results/index.html`` and the README's table.

Everything shown is read from the files the notebooks wrote (metrics CSV/JSON, figures,
rendered notebooks); nothing is typed in by hand. Run by ``make index`` (part of ``make all``):
``python -m helpers.report DATASET``.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .core import paths
from .core.detector import best_by_validation
from .core.repro import atomic_path
from .data.datasets import DATASETS

#: Figure folders in reading order, with the heading each gets in the index.
FIGURE_SECTIONS = (
    ("figures", "Data"), ("curves", "Training curves"), (".", "Evaluation"),
    ("evaluation", "Evaluation details"), ("generated_images", "GAN samples"),
    ("gradcam", "Grad-CAM"),
)
METRIC_COLUMNS = ("model", "accuracy", "ci_low", "ci_high", "auc", "average_precision", "f1",
                  "ece", "n_test", "val_accuracy", "params", "train_seconds", "inference_images_per_s")
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


def _fmt(column: str, value) -> str:
    if pd.isna(value):
        return "–"
    if column in ("accuracy", "ci_low", "ci_high", "val_accuracy"):
        return f"{100 * value:.2f} %"
    if column in ("auc", "average_precision", "f1", "ece"):
        return f"{value:.4f}"
    if column in ("params", "n_test"):
        return f"{int(value):,}"
    if column in ("train_seconds", "inference_images_per_s"):
        return f"{value:,.0f}"
    return html.escape(str(value))


def metrics_html(metrics: pd.DataFrame) -> str:
    columns = [c for c in METRIC_COLUMNS if c in metrics.columns]
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(c, row[c])}</td>" for c in columns) + "</tr>"
                   for _, row in metrics.iterrows())
    return f"<table><tr>{head}</tr>{rows}</table>"


def _figures_html(root: Path) -> str:
    parts = []
    for folder, title in FIGURE_SECTIONS:
        pngs = sorted((root / folder).glob("*.png"))
        if folder == "generated_images" and len(pngs) > 4:  # per-epoch grids: first, last, final
            pngs = pngs[:1] + pngs[-3:]
        if not pngs:
            continue
        cells = "".join(
            f'<a href="{p.relative_to(root).as_posix()}"><figure><img src="{p.relative_to(root).as_posix()}" '
            f'loading="lazy"><figcaption>{html.escape(p.stem)}</figcaption></figure></a>' for p in pngs)
        parts.append(f"<h2>{title}</h2><div class='grid'>{cells}</div>")
    return "".join(parts)


STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:360px}
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:12px;text-align:center}
.demo{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:4px}
code{background:#f5f5f5;padding:1px 4px}</style>"""


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
    body.append(f"<p>Reproduce: <code>{html.escape(STEP_COMMANDS.get(dataset, 'make all DATASET=' + dataset))}</code>"
                f" · data fingerprint <code>{html.escape(str(report.get('data_fingerprint', '?')))}</code></p>")
    # no build time: the page is a function of the files it shows, so a rerun leaves git clean
    if report.get("counts"):
        counts = pd.DataFrame(report["counts"]).T
        body.append("<h2>Data</h2>" + counts.to_html(border=0))
    metrics = load_metrics(dataset)
    if metrics is not None:
        body.append("<h2>Test metrics (95 % bootstrap CI)</h2>" + metrics_html(metrics))
    notebooks = sorted((root / "notebooks").glob("*.html"))
    if notebooks:
        links = "".join(f"<li><a href='notebooks/{p.name}'>{html.escape(p.stem)}</a></li>" for p in notebooks)
        body.append(f"<h2>Executed notebooks</h2><ul>{links}</ul>")
    body.append(_figures_html(root))
    page = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}{''.join(body)}"
    return _write(root / "index.html", page)


def best_rows() -> list[tuple[str, pd.Series, bool]]:
    """Per dataset, the model chosen on *validation* data, as notebook 05 chooses it
    (:func:`helpers.core.detector.best_by_validation`: accuracy, then the lower loss), as
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
        items.append(f"<li><a href='{folder.name}/index.html'>{folder.name}</a></li>")
    table = ""
    rows = best_rows()
    if rows:
        table = "<h2>Best model per dataset (chosen on validation)</h2>" + _best_table(rows)
    page = (f"<!doctype html><meta charset='utf-8'><title>Results</title>{STYLE}"
            f"<h1>AI-generated image detection: results</h1>{table}<h2>Datasets</h2><ul>{''.join(items)}</ul>")
    return _write(paths.RESULTS / "index.html", page)


def _best_table(rows) -> str:
    columns = [c for c in METRIC_COLUMNS if c in rows[0][1].index]
    head = "<th>dataset</th>" + "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(f"<tr><td><a href='{d}/index.html'>{html.escape(_dataset_label(d, ranked))}</a></td>"
                   + "".join(f"<td>{_fmt(c, r.get(c))}</td>" for c in columns) + "</tr>"
                   for d, r, ranked in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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
    """Markdown table of the best model per dataset, from the metrics files; the worst case is
    the lowest accuracy under notebook 05's robustness protocol (a test subset)."""
    lines = [("| dataset | model | test accuracy (95 % CI) | AUC | worst case, post-processed | test images "
              "| reproduce |"),
             "|---|---|---|---|---|---|---|"]
    for dataset, row, ranked in best_rows():
        ci = (f" ({100 * row['ci_low']:.2f}–{100 * row['ci_high']:.2f})"
              if "ci_low" in row and pd.notna(row["ci_low"]) else "")
        auc = f"{row['auc']:.4f}" if "auc" in row and pd.notna(row["auc"]) else "–"
        n = f"{int(row['n_test']):,}" if "n_test" in row and pd.notna(row["n_test"]) else "–"
        name = _dataset_label(dataset, ranked)
        lines.append(f"| {name} | {row['model']} | {100 * row['accuracy']:.2f} %{ci} | {auc} | "
                     f"{worst_case(dataset, row['model'])} | {n} | "
                     f"`{STEP_COMMANDS.get(dataset, 'make all DATASET=' + dataset)}` |")
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
