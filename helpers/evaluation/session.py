"""Notebook 05's evaluation, section by section: :class:`Evaluation` holds the run (its
parameters, the detectors, their test splits and results) and has one method per section of
the notebook. Each method computes its tables, writes its files under ``results/<dataset>/``
and returns a :class:`Section`, which shows (in a notebook) its text, tables and figures in
order. The notebook keeps the story in its markdown cells; the parameters it is run with are
recorded from its cell tagged ``parameters`` (:class:`EvaluationParameters`), never retyped.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import accel, detector, paths
from ..core import notebook as nbh
from ..core.stats import stratified_subset
from ..data import cache as data
from ..data import datasets
from ..explore import stats
from ..gan.demo import demo_fakes
from . import compare
from .sections import Section, Sections

#: The notebook whose cell tagged ``parameters`` declares :class:`EvaluationParameters`.
NOTEBOOK = paths.ROOT / "notebooks" / "05_evaluate.ipynb"


@dataclass(frozen=True)
class EvaluationParameters:
    """Notebook 05's parameters, named as its cell tagged ``parameters`` names them (the
    notebook documents each; its defaults are the only ones, :meth:`from_notebook` reads them).
    ``performance_metrics.json`` records all of them (``config``)."""

    DATASET: str
    DATA_SOURCE: str | None
    IMAGE_SIZE: int | None
    SEED: int
    DEVICE: str
    N_BOOTSTRAP: int
    THRESHOLD: float | None
    CROSS_DATASET_MAX_IMAGES: int | None
    BATCH_SIZE: int | None
    MODELS: list[str] | None
    GALLERY_SIZE: int
    ROBUSTNESS: bool
    ROBUSTNESS_MAX_IMAGES: int | None
    STORAGE: str | None

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> EvaluationParameters:
        """The parameters as the notebook holds them (``globals()`` after its parameters cell)."""
        missing = [f.name for f in fields(cls) if f.name not in namespace]
        if missing:
            raise KeyError(f"the notebook does not define {', '.join(missing)} (its parameters cell should)")
        return cls(**{f.name: namespace[f.name] for f in fields(cls)})

    @classmethod
    def from_notebook(cls, notebook: str | Path = NOTEBOOK, **overrides) -> EvaluationParameters:
        """The defaults of ``notebook``'s parameters cell, with ``overrides`` (as papermill's ``-p``).
        Raises ValueError when the cell and this class name different parameters."""
        import papermill

        declared = {name: ast.literal_eval(p["default"])
                    for name, p in papermill.inspect_notebook(str(notebook)).items()}
        own = {f.name for f in fields(cls)}
        if set(declared) != own or not set(overrides) <= own:
            raise ValueError(f"{Path(notebook).name} declares {sorted(declared)}; EvaluationParameters "
                             f"has {sorted(own)}; overrides {sorted(overrides)}: make them the same")
        return cls(**{**declared, **overrides})


class SplitAtSize:
    """The test split at one image size (every detector of that size is scored on it) and
    what the checks derive from it, each computed once."""

    def __init__(self, cache, seed: int, robustness_max_images: int | None):
        self.cache, self.seed, self.max_images = cache, seed, robustness_max_images
        self.images, self.labels = cache.part("test")
        self.files = cache.files[cache.indices("test")]

    @cached_property
    def colour_p_fake(self) -> np.ndarray:
        """P(FAKE) of the colour-only baseline (fitted on this cache's train split)."""
        model = stats.colour_baseline(self.cache, self.seed)
        return model.predict_proba(stats.colour_histograms(self.images))[:, 1]

    @cached_property
    def near_copy(self) -> np.ndarray:
        """Per test image: a training image's thumbnail correlates with it at 0.95 or more."""
        near = stats.near_duplicates(self.cache, threshold=0.95, splits=("test",))
        return np.isin(self.cache.indices("test"), near["index"])

    @cached_property
    def subset(self) -> np.ndarray:
        """The robustness checks' stratified, seeded subsample (indices into the test split)."""
        return stratified_subset(self.labels, self.max_images, self.seed)


class Evaluation(Sections):
    """Every detector of a dataset on its test split, one method per section of notebook 05.

    Constructing it does the notebook's setup (:func:`helpers.core.notebook.setup`, the cache,
    the device). The sections after :meth:`detectors` and :meth:`headline` need those two;
    they are run on demand. :meth:`write_summary` writes ``performance_metrics.csv|json`` from
    whatever the sections before it computed.
    """

    def __init__(self, params: EvaluationParameters, ensure: Callable | None = None):
        """``ensure(cache, seed, device)``: trains the dataset's default detector when it has
        none (:func:`helpers.training.ensure.ensure_detector`; None: nothing is trained)."""
        self.params, self.ensure = params, ensure
        p = params
        self.env = nbh.setup(p.DATASET, p.SEED, device=p.DEVICE, storage=p.STORAGE)
        self.cache = self.prepare(p.IMAGE_SIZE)
        self.device = str(accel.pick_device(p.DEVICE))
        self.spec = datasets.get_spec(p.DATASET)
        if self.cache.meta["is_demo"]:
            print("DEMO DATA: synthetic, built offline; not a benchmark.")
        print("decision threshold: " + ("each detector's own, chosen on validation" if p.THRESHOLD is None
                                       else f"P(FAKE) >= {p.THRESHOLD} for every detector (given)"))
        self.pairs: list | None = None
        self.splits: dict[int, SplitAtSize] = {}
        self.skipped: list[tuple[str, str]] = []
        self.tables: dict[str, pd.DataFrame | None] = {}  # what the sections computed, by file stem
        self.cross: list[dict[str, Any]] = []
        self._results = None

    def prepare(self, size: int | None, progress: bool = True):
        """The dataset's cache at ``size`` pixels (None: the dataset's default)."""
        p = self.params
        return data.prepare(p.DATASET, p.DATA_SOURCE, size, p.SEED, make_fakes=demo_fakes,
                            **({} if progress else {"progress": False}))

    @property
    def record(self) -> dict[str, Any]:
        """The run's parameters as saved (``config``): every notebook parameter and the device used."""
        return {**asdict(self.params), "device": self.device}

    # ------------------------------------------------------------------ the detectors and results
    def detectors(self) -> Section:
        """Load every detector of the dataset (training the default first when there is none),
        pair each with the cache of its size, drop those trained on other data."""
        p = self.params
        if self.ensure is not None:
            self.ensure(self.cache, p.SEED, p.DEVICE)  # opened alone: notebook 03's default first
        found, skipped = detector.load_all(p.DATASET, self.device, p.MODELS)
        self.pairs, mismatched = compare.match_caches(found, self.cache, lambda s: self.prepare(s, progress=False))
        self.skipped = skipped + mismatched
        for name, reason in self.skipped:
            print(f"skipped {name}: {reason}")
        if not self.pairs:
            raise RuntimeError(f"no usable detector in {paths.RESULTS / p.DATASET / 'models'}: train one "
                               f"first ({detector.train_hint(p.DATASET)})")
        for det, c in self.pairs:
            self.splits.setdefault(det.image_size, SplitAtSize(c, p.SEED, p.ROBUSTNESS_MAX_IMAGES))
        names = ", ".join(f"{d.name} ({d.architecture}, {d.image_size}px)" for d, _ in self.pairs)
        return Section().add("print", f"evaluating: {names}").add("table", self.cache.counts())

    def split_of(self, result) -> SplitAtSize:
        """The test split a result (or detector) was scored on."""
        return self.splits[getattr(result, "detector", result).image_size]

    @property
    def results(self) -> list:
        """Every usable detector's :class:`~helpers.evaluation.compare.ModelResult` on its test split."""
        if self._results is None:
            if self.pairs is None:
                self.detectors()
            p = self.params
            self._results = [compare.evaluate_detector(d, s.images, s.labels, s.files, device=self.device,
                                                       batch_size=p.BATCH_SIZE, threshold=p.THRESHOLD,
                                                       n_bootstrap=p.N_BOOTSTRAP, seed=p.SEED)
                             for d, _ in self.pairs for s in [self.split_of(d)]]
        return self._results

    @property
    def best(self):
        """The best result by validation (never by test)."""
        return compare.best_result(self.results)

    def check_args(self) -> tuple:
        """``(threshold, n_bootstrap, seed)`` as the checks of :mod:`.compare` take them."""
        return self.params.THRESHOLD, self.params.N_BOOTSTRAP, self.params.SEED

