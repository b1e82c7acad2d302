"""The report's columns, declared once: each metric of ``performance_metrics.csv`` that a reader
sees, with its heading, its format and its interval.

One ordered tuple, :data:`COLUMNS`, drives every place that shows the metrics: the order of the
CSV's columns (:func:`helpers.evaluation.compare.metrics_frame`), notebook 05's tables
(:func:`helpers.evaluation.compare.shown_names`, :func:`helpers.evaluation.compare.comparison_table`),
the results index and the README's table (:mod:`helpers.report`). A new metric is computed in
:mod:`helpers.evaluation.metrics` and declared here; nothing else lists columns
(``tests/test_columns.py::test_adding_a_metric_is_one_declared_column``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: Where a column is shown: notebook 05's tables, the results index, the README's table.
NOTEBOOK, INDEX, README = "notebook", "index", "readme"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {seconds % 3600 / 60:02.0f} min"


#: Format name -> (the number as text, the unit written after it and after an interval).
FORMATS = {
    "percent": (lambda v: f"{100 * v:.2f}", " %"),
    "ratio": (lambda v: f"{v:.4f}", ""),
    "count": (lambda v: f"{int(v):,}", ""),
    "rate": (lambda v: f"{v:,.0f}", ""),
    "duration": (_duration, ""),
}


@dataclass(frozen=True)
class Column:
    """One metric as a reader sees it.

    ``name``: the column of ``performance_metrics.csv``; ``label``: its heading; ``fmt``:
    ``"text"`` or a key of :data:`FORMATS`; ``ci``: the CSV columns of its interval
    ``(low, high)``, shown in the same cell ("97.93 % (97.73–98.12)"), or None; ``where``: the
    places that show it (:data:`NOTEBOOK`, :data:`INDEX`, :data:`README`).
    """

    name: str
    label: str
    fmt: str = "ratio"
    ci: tuple[str, str] | None = None
    where: tuple[str, ...] = (NOTEBOOK, INDEX)

    def __post_init__(self):
        if self.fmt != "text" and self.fmt not in FORMATS:
            raise ValueError(f"column {self.name}: format {self.fmt!r} is not 'text' or one of {sorted(FORMATS)}")

    @property
    def names(self) -> tuple[str, ...]:
        """The CSV columns it reads: its own and its interval's."""
        return (self.name, *(self.ci or ()))

    def text(self, row: Mapping) -> str:
        """The cell of ``row`` (a metrics row: dict or pandas Series), "–" when it has no value."""
        value = row.get(self.name) if hasattr(row, "get") else None
        if self.fmt == "text":
            return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        number = _number(value)
        if number is None:
            return "–"
        write, unit = FORMATS[self.fmt]
        bounds = [_number(row.get(name)) for name in self.ci or ()]
        if self.ci and None not in bounds:
            return f"{write(number)}{unit} ({write(bounds[0])}–{write(bounds[1])})"
        return f"{write(number)}{unit}"


#: Every column a reader sees, in the order shown.
COLUMNS: tuple[Column, ...] = (
    Column("model", "model", "text", where=(NOTEBOOK, INDEX, README)),
    Column("accuracy", "test accuracy (95 % CI)", "percent", ci=("ci_low", "ci_high"),
           where=(NOTEBOOK, INDEX, README)),
    Column("ci_method", "interval", "text", where=(NOTEBOOK,)),
    Column("auc", "AUC", where=(NOTEBOOK, INDEX, README)),
    Column("average_precision", "average precision"),
    Column("f1", "F1 (FAKE)"),
    Column("ece", "calibration error (ECE)"),
    Column("test_loss", "test loss", where=(NOTEBOOK,)),
    Column("threshold", "threshold"),
    Column("val_accuracy", "validation accuracy", "percent"),
    Column("n_test", "test images", "count", where=(NOTEBOOK, INDEX, README)),
    Column("params", "parameters", "count"),
    Column("train_seconds", "training time", "duration"),
    Column("inference_images_per_s", "images/s at inference", "rate"),
)


def shown(place: str) -> list[Column]:
    """The columns shown in ``place``, in :data:`COLUMNS`' order."""
    return [c for c in COLUMNS if place in c.where]


def csv_names(place: str | None = None) -> list[str]:
    """The CSV columns behind the columns of ``place`` (every declared one when None), each
    followed by its interval's, without repeats."""
    chosen = COLUMNS if place is None else shown(place)
    return list(dict.fromkeys(name for c in chosen for name in c.names))
