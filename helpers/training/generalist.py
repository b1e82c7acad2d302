"""A generalist detector and the leave-one-generator-out protocol (issue #35, item 4).

The project has four generators, each with real photos it is paired with:

* ``sd14``: Stable Diffusion 1.4 against CIFAR-10 (CIFAKE);
* ``midjourney``: Midjourney against shoe photos (the shoes);
* ``fastgan``: the project's FastGAN (notebook 04 on CIFAKE, its exported images) against
  CIFAR-10 photos that the ``sd14`` pair does not use;
* ``dcgan``: the demo's DCGAN against crops of scikit-image's photos (the demo).

Every image is brought to one common side (32 px, CIFAKE's) by the project's image rule
(:func:`helpers.core.images.decode`, through each dataset's cache). Each pair keeps its dataset's
own train / val / test split, so no test image is ever trained on. Where two generators share a
dataset's REAL photos (``sd14`` and ``fastgan``), the photos are dealt between them by position,
the same way in every run, so the held-out pair of a fold is the same images in every fold.

Protocol (:func:`run_study`), for each input (``fast``: the pixels; ``npr``: the
neighbouring-pixel residual of Tan et al., CVPR 2024, :mod:`helpers.core.npr`):

* ``all``: trained on every pair, scored on every pair's test images (the generalist);
* ``without <g>``: trained on the other three pairs, scored on ``g``'s test pair (held out:
  a generator *and* photos it never saw, except that CIFAR-10 photos stay seen through ``sd14``
  when ``fastgan`` is held out, and the reverse);
* ``only <g>``: trained on one pair, scored on all four (what one generator teaches).

Rows carry ROC AUC and average precision with stratified bootstrap 95 % CIs
(:func:`helpers.core.stats.ranking_ci`), and accuracy at the detector's own threshold (chosen on
its own validation split). The generalist of each input is saved as
``results/generalist/models/<input>.pt``, which ``predict --dataset generalist`` and the app use;
the folds under ``results/generalist/folds/``. The study: ``docs/generalist-study.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import paths
from ..core.detector import Detector
from ..core.repro import fingerprint_bytes, write_csv
from ..core.stats import ranking_ci
from ..data.cache import ImageCache, find_cache, prepare
from ..data.datasets import SPLITS, DataUnavailableError, get_spec
from ..gan.demo import demo_fakes
from ..gan.export import load_exported
from .config import DEFAULTS, TrainConfig
from .domain import shorter_sides
from .loop import fit

NAME = "generalist"  # the results folder and the checkpoints' dataset
MIXTURE_VERSION = 1  # bump when the way pairs are drawn changes
#: images per class and split taken from each pair at most (seeded), so CIFAKE's 100,000 do
#: not drown the 1,745 shoes; the smaller pairs give what they have
CAPS = {"train": 2000, "val": 300, "test": 1000}
#: the training recipe of every detector of the study: the demo's ``fast`` settings, longer
RECIPE = {**{k: v for k, v in DEFAULTS["demo"].items() if k != "model"}, "epochs": 10}


@dataclass(frozen=True)
class Generator:
    """One generator and where its images and its REAL counterpart come from."""

    name: str
    title: str
    dataset: str  # the dataset whose cache holds the REAL photos (and the FAKE images unless exported)
    exported: bool = False  # FAKE = the dataset's exported GAN images (notebook 04), not its FAKE class


GENERATORS: dict[str, Generator] = {g.name: g for g in (
    Generator("sd14", "Stable Diffusion 1.4 (CIFAKE)", "cifake"),
    Generator("midjourney", "Midjourney (shoes)", "sneakers"),
    Generator("fastgan", "the project's FastGAN (notebook 04, exported)", "cifake", exported=True),
    Generator("dcgan", "the demo's DCGAN", "demo"),
)}


@dataclass
class Pair:
    """One generator's images with its REAL counterpart: per split (images (N, S, S, 3) uint8,
    labels (N,) 0 REAL / 1 FAKE, shorter side of each source file in px)."""

    generator: str
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    fingerprint: str  # of where the pixels came from


def _cache(dataset: str, size: int, seed: int, sources: dict[str, str]) -> ImageCache:
    cache = find_cache(dataset, size, seed)
    if cache is None:
        if dataset not in sources and not get_spec(dataset).is_demo:  # the demo builds itself
            raise DataUnavailableError(
                f"no {size}-px cache of {dataset}: pass --data-source {dataset}=PATH (its local copy)")
        cache = prepare(dataset, sources.get(dataset), size, seed, make_fakes=demo_fakes)
    return cache


def _take(index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(index, cap, replace=False)) if len(index) > cap else index


def load_pair(generator: Generator, size: int = 32, seed: int = 0, sources: dict[str, str] | None = None,
              gan_dataset: str | None = None) -> Pair:
    """The images of ``generator``'s pair at ``size`` px, capped by :data:`CAPS` (seeded).

    ``gan_dataset`` (``fastgan`` only) reads another dataset's exported GAN images and pairs
    them with that dataset's photos (those the GAN learnt from), e.g. the demo's when CIFAKE's
    GAN was not trained here. Raises DataUnavailableError naming what to
    run when a cache or the exported images are missing."""
    def dataset(g: Generator) -> str:  # a GAN's photos are those it was trained on
        return (gan_dataset or g.dataset) if g.exported else g.dataset

    cache = _cache(dataset(generator), size, seed, sources or {})
    sides = shorter_sides(cache)
    sharing = [g.name for g in GENERATORS.values() if dataset(g) == dataset(generator)]
    rng = np.random.default_rng([seed, sorted(GENERATORS).index(generator.name)])
    fakes, fake_fp = None, cache.fingerprint
    if generator.exported:
        gan_dataset = dataset(generator)
        fakes = load_exported(gan_dataset, size)
        if fakes is None or not len(fakes):
            raise DataUnavailableError(f"no exported GAN images of {gan_dataset}: run `make gan "
                                       f"DATASET={gan_dataset}` (notebook 04) first")
        fake_split = np.random.default_rng([seed, 7]).permutation(len(fakes)) % 10  # 8:1:1
        fake_fp = fingerprint_bytes(fakes)
    parts = {}
    for split in SPLITS:
        index = cache.indices(split)
        real = index[cache.labels[index] == 0]
        real = real[sharing.index(generator.name)::len(sharing)]  # photos dealt between the pair's users
        real = _take(real, CAPS[split], rng)
        if fakes is None:
            fake = _take(index[cache.labels[index] == 1], CAPS[split], rng)
            images = np.concatenate([cache.images[real], cache.images[fake]])
            fake_sides = sides[fake]
        else:
            chosen = {"train": fake_split < 8, "val": fake_split == 8, "test": fake_split == 9}[split]
            fake = _take(np.flatnonzero(chosen), CAPS[split], rng)
            images = np.concatenate([cache.images[real], fakes[fake]])
            fake_sides = np.full(len(fake), float(fakes.shape[1]))
        labels = np.concatenate([np.zeros(len(real), np.uint8), np.ones(len(fake), np.uint8)])
        parts[split] = (images, labels, np.concatenate([sides[real], fake_sides]))
    return Pair(generator.name, parts, f"{cache.fingerprint}-{fake_fp}")


def mixture(pairs: list[Pair], seed: int = 0) -> ImageCache:
    """One training set of ``pairs`` (each pair's splits kept), as an :class:`ImageCache` that
    :func:`helpers.training.loop.fit` takes, saved under ``data/processed/generalist/`` (its
    ``records.csv`` holds each file's original shorter side for the domain check)."""
    key = json.dumps([MIXTURE_VERSION, seed, CAPS, [(p.generator, p.fingerprint) for p in pairs]])
    fingerprint = fingerprint_bytes(key.encode())
    images, labels, split, files, sides = [], [], [], [], []
    for pair in pairs:
        for code, name in enumerate(SPLITS):
            x, y, s = pair.parts[name]
            images.append(x), labels.append(y), sides.append(s)
            split.append(np.full(len(y), code, np.int8))
            files += [f"{pair.generator}/{name}/{'FAKE' if v else 'REAL'}/{i:05d}" for i, v in enumerate(y)]
    folder = paths.processed_dir(NAME) / f"mixture-v{MIXTURE_VERSION}-{fingerprint}"
    folder.mkdir(parents=True, exist_ok=True)
    side = np.concatenate(sides)
    write_csv(pd.DataFrame({"file": files, "width": side, "height": side}), folder / "records.csv")
    meta = {"dataset": NAME, "data_fingerprint": fingerprint, "image_size": int(images[0].shape[1]),
            "is_demo": False, "generators": [p.generator for p in pairs], "source": "mixture"}
    return ImageCache(np.concatenate(images), np.concatenate(labels), np.concatenate(split),
                      np.asarray(files), meta, folder)


def score_pair(detector: Detector, pair: Pair, n_bootstrap: int = 500, seed: int = 0) -> dict:
    """AUC and AP with 95 % CIs, and accuracy at the detector's threshold, on ``pair``'s test
    images."""
    images, labels, _ = pair.parts["test"]
    p_fake = detector.predict_proba(images)
    auc = ranking_ci(labels, p_fake, "auc", n_bootstrap, seed=seed)
    ap = ranking_ci(labels, p_fake, "average_precision", n_bootstrap, seed=seed)
    return {"test_generator": pair.generator, "n_real": int((labels == 0).sum()), "n_fake": int(labels.sum()),
            "auc": auc.estimate, "auc_low": auc.low, "auc_high": auc.high,
            "ap": ap.estimate, "ap_low": ap.low, "ap_high": ap.high,
            "accuracy": float(((p_fake >= detector.threshold) == labels.astype(bool)).mean())}


def folds(generators: list[str]) -> list[tuple[str, list[str]]]:
    """``(fold name, generators trained on)``: all, each one left out, each one alone."""
    out = [("all", list(generators))]
    out += [(f"without {g}", [h for h in generators if h != g]) for g in generators]
    return out + [(f"only {g}", [g]) for g in generators]


def train_fold(pairs: dict[str, Pair], trained_on: list[str], model: str, out_dir: Path,
               seed: int = 0, **overrides) -> Detector:
    """Train ``model`` (:data:`RECIPE`, with ``overrides``) on the pairs ``trained_on``."""
    cache = mixture([pairs[g] for g in trained_on], seed)
    config = TrainConfig(dataset=NAME, model=model, image_size=cache.meta["image_size"], seed=seed,
                         **{**RECIPE, **overrides})
    result = fit(cache, config, out_dir, progress=False, resume=False)
    return Detector.load(result.checkpoint)


def run_study(pairs: dict[str, Pair], models: list[str], seed: int = 0,
              results: Path | None = None, **overrides) -> pd.DataFrame:
    """Every fold of :func:`folds` for every input ``model``; one row per (model, fold, test
    generator), ``seen`` telling whether the test generator was trained on. Writes
    ``results/generalist/held_out.csv`` as it goes (atomically)."""
    results = results or paths.results_dir(NAME)
    rows = []
    for model in models:
        trained = {}  # with two generators "without a" is "only b": one detector for both
        for fold, trained_on in folds(list(pairs)):
            key = tuple(sorted(trained_on))
            if key not in trained:
                out = results / "models" if fold == "all" else results / "folds" / fold.replace(" ", "-")
                trained[key] = train_fold(pairs, trained_on, model, out, seed, **overrides)
            detector = trained[key]
            for name, pair in pairs.items():
                if fold.startswith("without") and name in trained_on:
                    continue  # a fold is scored on what it left out (and the generalist on all)
                rows.append({"input": model, "fold": fold, "trained_on": "+".join(trained_on),
                             "seen": name in trained_on, **score_pair(detector, pair, seed=seed),
                             "train_seconds": round(detector.run_seconds or 0.0, 1)})
            write_csv(pd.DataFrame(rows), results / "held_out.csv")
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per input: mean AUC of the generalist on every pair (seen), of the leave-one-out folds on
    the generator each left out, and of the one-generator detectors on the three they never
    saw: does training on more generators help on the one left out?"""
    groups = {"generalist, seen generators": table["fold"] == "all",
              "three generators, the held-out one": table["fold"].str.startswith("without"),
              "one generator, the three unseen": table["fold"].str.startswith("only") & ~table["seen"]}
    rows = []
    for model, part in table.groupby("input", sort=False):
        for label, mask in groups.items():
            cells = part[mask.loc[part.index]]
            rows.append({"input": model, "detectors": label, "cells": len(cells),
                         "mean_auc": cells["auc"].mean(), "min_auc": cells["auc"].min(),
                         "mean_ap": cells["ap"].mean()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Train the generalist and run the leave-one-generator-out protocol."""
    parser = argparse.ArgumentParser(prog="python -m helpers.training.generalist", description=main.__doc__)
    parser.add_argument("--models", nargs="+", default=["fast", "npr"], help="inputs: fast (pixels), npr")
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    parser.add_argument("--data-source", action="append", default=[], metavar="DATASET=PATH",
                        help="a local copy for a dataset whose 32-px cache is not built yet")
    parser.add_argument("--gan-dataset", default=None, help="whose exported GAN images are fastgan's "
                        "(default cifake; demo when CIFAKE's GAN was not trained)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    args = parser.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.data_source)
    pairs = {g: load_pair(GENERATORS[g], seed=args.seed, sources=sources, gan_dataset=args.gan_dataset)
             for g in args.generators}
    for name, pair in pairs.items():
        counts = {s: len(pair.parts[s][1]) for s in SPLITS}
        print(f"{name:10s} {GENERATORS[name].title}: {counts}")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("threads", args.threads)) if v}
    table = run_study(pairs, args.models, args.seed, **overrides)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
        print(summary(table).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
