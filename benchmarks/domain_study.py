"""The domain check's score, chosen by measurement (docs/domain-check-study.md, #35).

For each dataset's best detector: candidate out-of-domain scores, each with its threshold at
the 95 % quantile of the detector's own validation images; the share of its own test images
that pass, and the share of every other dataset's images flagged outside, on their
validation splits (what the choice looks at) and their test splits (reported only). Every
image reaches a detector through its own preprocessing (:func:`helpers.core.images.decode`
at its size). Candidates:

* ``detector``: k-NN distance (Sun et al. 2022, k = 10, L2-normalised) in the detector's own
  penultimate features (the input of its last linear layer);
* ``max_logit``: minus the absolute logit (the energy / max-logit family for one logit);
* ``lite0``, ``stats``, ``lite0+stats``: :mod:`helpers.core.domain`'s feature spaces;
* each also with the resize rule (``+resize``) on the test splits.

    AIDETECT_DATA=... AIDETECT_RESULTS=... python benchmarks/domain_study.py --datasets demo sneakers cifake

``--saved``: instead, each detector's *saved* check on every dataset's test split, as notebook
05 reports it (:func:`helpers.evaluation.domain.table`, with CIs), and its figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers.core.detector import Detector, best_path
from helpers.core.domain import COVERAGE, FEATURE_FUNCTIONS, RESIZE_TOLERANCE, KnnScore, sample_indices
from helpers.core.stats import ranking_ci
from helpers.data.cache import find_cache
from helpers.data.datasets import get_spec
from helpers.evaluation.cross_dataset import split_source
from helpers.evaluation.domain import read_with_sides
from helpers.training.domain import shorter_sides

CANDIDATES = ("detector", "max_logit", "lite0", "stats", "lite0+stats")


@torch.inference_mode()
def penultimate(detector: Detector, images: np.ndarray) -> np.ndarray:
    """(N, F) inputs of the detector's last linear layer (its penultimate features)."""
    last = [m for m in detector.model.modules() if isinstance(m, nn.Linear)][-1]
    grabbed = []
    handle = last.register_forward_hook(lambda m, args, out: grabbed.append(args[0].detach().float().cpu()))
    try:
        detector.predict_proba(images)
    finally:
        handle.remove()
    return torch.cat(grabbed).numpy().reshape(len(images), -1) if grabbed else np.zeros((0, 1))


def logits(detector: Detector, images: np.ndarray) -> np.ndarray:
    p = np.clip(detector.predict_proba(images), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


class Features:
    """Each feature space's features of one image set, computed once."""

    def __init__(self, detector: Detector, images: np.ndarray):
        self.detector, self.images, self._cache = detector, images, {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = (penultimate(self.detector, self.images) if name == "detector"
                                 else logits(self.detector, self.images)[:, None] if name == "max_logit"
                                 else FEATURE_FUNCTIONS[name](self.images))
        return self._cache[name]


def scorer(candidate: str, bank: Features, val: Features):
    """A function Features -> (N,) score (higher: further outside), and its threshold on ``val``."""
    if candidate == "max_logit":
        def score(f):
            return -np.abs(f("max_logit")[:, 0])
    else:
        parts = []
        for name in candidate.split("+"):
            knn = KnnScore.fit("stats" if name == "stats" else name, bank(name))
            knn.quantile = float(np.quantile(knn.distances(val(name)), COVERAGE)) or 1.0
            parts.append((name, knn))

        def score(f):
            return np.max([k.distances(f(n)) / k.quantile for n, k in parts], axis=0)
    return score, float(np.quantile(score(val), COVERAGE))


def study(dataset: str, others: list[str], n: int, seed: int) -> list[dict]:
    detector = Detector.load(best_path(dataset))
    cache = find_cache(dataset, detector.image_size, seed)
    quality = get_spec(dataset).harmonise_jpeg
    train, val = cache.indices("train"), cache.indices("val")
    train = train[sample_indices(len(train), 2048, seed, cache.labels[train])]
    val = val[sample_indices(len(val), 2000, seed + 1)]
    sides = shorter_sides(cache)[cache.indices("train")]
    low, high = np.nanmin(sides), np.nanmax(sides)
    bank, val_f = Features(detector, cache.images[train]), Features(detector, cache.images[val])
    sets = {}
    for name, split in [(dataset, "test")] + [(o, s) for o in others for s in ("val", "test")]:
        if name == dataset and split == "val":
            continue
        source = split_source(name, split, seed, n)
        if isinstance(source, str):
            print(f"{name} {split}: not available ({source})")
            continue
        images, _, s = read_with_sides(source, detector.image_size, quality)
        sets[(name, split)] = (Features(detector, images), s)
    own_images = sets[(dataset, "test")][0].images[:500]
    if detector.domain is not None:  # what the saved check costs at inference, next to the verdict
        started = time.perf_counter()
        detector.predict_proba(own_images)
        verdict = time.perf_counter() - started
        started = time.perf_counter()
        detector.in_domain(own_images)
        check = time.perf_counter() - started
        print(f"{dataset}: saved check {detector.domain.features}, fitted in "
              f"{detector.domain.notes.get('fit_seconds')} s; per image {1e3 * verdict / len(own_images):.2f} ms "
              f"verdict, {1e3 * check / len(own_images):.2f} ms domain check ({len(own_images)} images)", flush=True)
    rows = []
    for candidate in CANDIDATES:
        started = time.perf_counter()
        score, threshold = scorer(candidate, bank, val_f)
        own = score(sets[(dataset, "test")][0])
        for (name, split), (feats, s) in sets.items():
            values = score(feats)
            inside = values <= threshold
            resized = (s < low / RESIZE_TOLERANCE) | (s > high * RESIZE_TOLERANCE)
            row = {"detector": f"{dataset}/{detector.name}", "candidate": candidate, "source": name,
                   "split": split, "n": len(values), "in_domain": float(inside.mean()),
                   "in_domain_with_resize": float((inside & ~resized).mean())}
            if name != dataset:
                ci = ranking_ci(np.r_[np.zeros(len(own)), np.ones(len(values))], np.r_[own, values], "auc", 200)
                row.update(auroc=ci.estimate, auroc_low=ci.low, auroc_high=ci.high)
            rows.append(row)
        print(f"{dataset} {candidate}: {time.perf_counter() - started:.1f} s", flush=True)
    return rows


def saved(datasets: list[str], n: int, seed: int, out: str) -> None:
    """Notebook 05's domain table of the saved checks on every dataset's test split."""
    from helpers.evaluation import domain as domain_eval
    from helpers.evaluation.cross_dataset import test_source

    detectors = []
    for dataset in datasets:
        detector = Detector.load(best_path(dataset))
        detector.title = f"{dataset}/{detector.name}"
        detectors.append(detector)
    sources = [test_source(d, seed, n) for d in datasets]
    table = domain_eval.table(detectors, [s for s in sources if not isinstance(s, str)])
    table.to_csv(out, index=False)
    domain_eval.plot(table).savefig(out.replace(".csv", ".png"), dpi=110)
    print(domain_eval.describe(table))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["demo", "sneakers", "cifake"])
    parser.add_argument("--images", type=int, default=1000, help="per source and split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/domain_study.csv")
    parser.add_argument("--saved", action="store_true", help="the saved checks, as notebook 05 reports them")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.saved:
        return saved(args.datasets, args.images, args.seed, args.out)
    rows = []
    for dataset in args.datasets:
        rows += study(dataset, [d for d in args.datasets if d != dataset], args.images, args.seed)
        pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
