"""The robustness study of issue #34 (docs/robustness-study.md): train a dataset's default with
each degradation recipe and score it on the VALIDATION split, clean and under notebook 05's
protocol (JPEG q95/75/50, blur sigma 0.5/1/2, rescale x0.5, centre crop 75 %); never the test split.

    AIDETECT_DATA=... python benchmarks/robustness_study.py --dataset sneakers \\
        --data-source /work/shared/data/sneakers --recipes none cnndet all --epochs 20 \\
        --out /tmp/study-sneakers

Prints and writes ``<out>/study.csv``: per recipe the clean validation accuracy, the worst
accuracy over the protocol and its condition, every condition's accuracy, the training time
and seconds per epoch. The default is then chosen by the rule in the document.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core.detector import Detector
from helpers.core.postprocess import perturbed_sets
from helpers.core.stats import stratified_subset
from helpers.data.cache import prepare
from helpers.evaluation.robustness import robustness_table, worst_case
from helpers.gan.demo import demo_fakes
from helpers.training.config import default_config
from helpers.training.loop import fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-source", default=None)
    p.add_argument("--recipes", nargs="+", default=["none", "cnndet"])
    p.add_argument("--epochs", type=int, default=None, help="default: the dataset's")
    p.add_argument("--max-images", type=int, default=2000, help="validation images scored (stratified)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    cache = prepare(args.dataset, args.data_source, None, args.seed, make_fakes=demo_fakes)
    images, labels = cache.part("val")
    keep = stratified_subset(labels, args.max_images, args.seed)
    sets = perturbed_sets(images[keep])
    rows = []
    for name in args.recipes:
        config = default_config(args.dataset, degrade=name, epochs=args.epochs, seed=args.seed)
        result = fit(cache, config, out / "models", progress=False, resume=False)
        seconds = result.seconds  # the epochs only, not the end-of-run checks
        det = Detector.load(result.checkpoint)
        table = robustness_table(det, sets, labels[keep])
        worst = worst_case(table).iloc[0]
        row = {"recipe": name, "epochs": config.epochs, "val_acc_full": result.metrics["val_acc"],
               "clean": worst["clean_accuracy"], "worst": worst["worst_accuracy"],
               "worst_condition": worst["worst_condition"], "train_s": round(seconds, 1),
               "s_per_epoch": round(seconds / config.epochs, 2)}
        row.update({c: a for c, a in zip(table["condition"], table["accuracy"]) if c != "clean"})
        rows.append(row)
        frame = pd.DataFrame(rows)
        frame.to_csv(out / "study.csv", index=False)
        print(frame.round(4).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
