"""The domain check of a trained detector (:mod:`helpers.core.domain`), fitted at the end of
training on the detector's own training images, its threshold on the validation split.

:func:`add_domain_check` is what :func:`helpers.training.loop.fit` runs last; it also adds a
check to a detector saved before checks existed (``python -m helpers.training.domain
CHECKPOINT`` with the dataset's cache at hand).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..core.detector import Detector
from ..core.domain import BANK_SIZE, DEFAULT_FEATURES, FEATURES, VAL_SIZE, fit_domain_check, sample_indices
from ..data.cache import find_cache


def shorter_sides(cache) -> np.ndarray:
    """(N,) float64 shorter side in px of each cached image's source file (NaN: not recorded)."""
    try:
        records = cache.records()
    except (FileNotFoundError, OSError):
        return np.full(len(cache.labels), np.nan)
    if not {"width", "height"} <= set(records.columns) or len(records) != len(cache.labels):
        return np.full(len(cache.labels), np.nan)
    return np.minimum(records["width"].to_numpy(np.float64), records["height"].to_numpy(np.float64))


def add_domain_check(detector: Detector, cache, features: str = DEFAULT_FEATURES, seed: int = 0,
                     **options) -> Detector:
    """Fit ``detector.domain`` on the train split of ``cache`` (the detector's own training
    data), its threshold on the val split (:func:`helpers.core.domain.fit_domain_check`);
    returns the detector (not saved). ``options`` go to ``fit_domain_check``. Raises
    ValueError when the cache is not the one the detector was trained on."""
    if cache.fingerprint != detector.data_fingerprint:
        raise ValueError(f"{cache.path}: not the data {detector.name} was trained on (fingerprint "
                         f"{cache.fingerprint} vs {detector.data_fingerprint}); fit the domain check "
                         "on the detector's own cache")
    started = time.perf_counter()
    train, val = cache.indices("train"), cache.indices("val")
    train_sides = shorter_sides(cache)[train]  # every training file: the resize rule's range
    # the same seeded samples fit_domain_check would draw, taken first: never a copy of a
    # whole split (CIFAKE's train split is 276 MB)
    train = train[sample_indices(len(train), options.get("bank_size", BANK_SIZE), seed, cache.labels[train])]
    val = val[sample_indices(len(val), options.get("val_size", VAL_SIZE), seed + 1)]
    detector.domain = fit_domain_check(cache.images[train], cache.images[val], features,
                                       train_labels=cache.labels[train], train_sides=train_sides,
                                       seed=seed, **options)
    detector.domain.notes["fit_seconds"] = round(time.perf_counter() - started, 2)
    return detector


def main(argv: list[str] | None = None) -> int:
    """Add (or refit) the domain check of saved checkpoints, on their dataset's cache."""
    parser = argparse.ArgumentParser(prog="python -m helpers.training.domain", description=main.__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--features", default=DEFAULT_FEATURES, choices=FEATURES)
    parser.add_argument("--seed", type=int, default=0, help="split seed of the cache")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        detector = Detector.load(path)
        cache = find_cache(detector.dataset, detector.image_size, args.seed)
        if cache is None:
            raise SystemExit(f"{path}: no cache of {detector.dataset} at {detector.image_size}px; "
                             f"run `make data DATASET={detector.dataset}`")
        add_domain_check(detector, cache, args.features, args.seed)
        detector.save(Path(path))
        d = detector.domain
        print(f"{path}: {d.features}, threshold {d.threshold:.4f}, {d.val_pass:.1%} of {d.n_val} "
              f"validation images pass, bank {d.n_bank}, {d.notes['fit_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
