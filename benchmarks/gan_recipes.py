"""Which GAN recipe buys the most image quality per CPU minute? KID against training time.

    # the shoes (64 px, ~480 real training images) and CIFAR-10 test photos (32 px, 10,000)
    .venv/bin/python benchmarks/gan_recipes.py --data sneakers --minutes 5 --score-at 1.25 2.5 5
    .venv/bin/python benchmarks/gan_recipes.py --data cifar10 --minutes 5 --score-at 1.25 2.5 5

Trains each recipe of :data:`helpers.gan.config.RECIPES` (DCGAN as published; DiffAugment
with spectral norm, the hinge loss and an EMA generator; the same with a projected
discriminator on frozen Lite0 features) on the same real images, with the same seed, batch
size and generator, for the same *training* time, and scores each at fixed marks of training
time (scoring is not counted): FID and KID of ``--fid-samples`` generated images against a
reference of as many real ones, next to the floor the same metric gives a second, disjoint set
of real images of that size (:func:`helpers.gan.quality.reference_and_floor`).

Data: ``sneakers`` is the project's cache of the shoes dataset (built from ``--source``, by
default ``../shared/data/sneakers``), its REAL train images at 64 px; ``cifar10`` the CIFAR-10
test photos of ``../shared/data/cifar10-test-jpg.zip``. Skips with a message when absent.

Writes ``kid_vs_time.csv``, ``summary.json``, ``kid_vs_time.png`` and one ``samples_<recipe>.png``
to ``--out`` (default ``results/benchmarks/gan_recipes/<data>``). Timings are wall-clock on
this machine; run nothing else heavy beside it (2 cores: two jobs slow each other ~4x).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from gan_fid_cifar10 import load_photos

from helpers.core.accel import cpu_has_bf16, cpu_name, pick_device, set_cpu_threads
from helpers.core.repro import environment_fingerprint, seed_everything, write_json
from helpers.gan import quality
from helpers.gan.config import RECIPES, recipe_config
from helpers.gan.monitor import EpochMonitor, image_grid, save_png
from helpers.gan.train import train_gan

SHARED = ROOT.parent / "shared" / "data"
SOURCES = {"sneakers": SHARED / "sneakers", "cifar10": SHARED / "cifar10-test-jpg.zip"}
COLUMNS = ("recipe", "epoch", "steps", "train_seconds", "fid", "kid", "kid_std", "n_fake", "n_real",
           "diversity_ratio", "score_seconds")


def real_images(data: str, source: Path) -> np.ndarray:
    """(N, R, R, 3) uint8 real training images: shoes at 64 px or CIFAR-10 photos at 32 px."""
    if data == "cifar10":
        return load_photos(source)[0]
    from helpers.data.cache import prepare
    from helpers.gan.train import real_training_images

    return real_training_images(prepare(data, source, progress=False), 64)


def earlier_rows(path: Path, recipes: list[str]) -> list[dict]:
    """The rows of an earlier run's CSV for recipes not rerun now, so a recipe can join a study.

    Runs are deterministic on a CPU (same seed, same real images, same floor), so rows from
    another invocation on the same machine compare like rows of this one.
    """
    if not path.exists():
        return []
    with open(path, newline="") as f:
        kept = [r for r in csv.DictReader(f) if r["recipe"] not in recipes]
    for row in kept:
        for key, value in row.items():
            if key != "recipe" and value not in ("", None):
                row[key] = float(value) if "." in value or "e" in value else int(value)
    return kept


def earlier_runs(path: Path, names: set[str]) -> dict:
    """The earlier summary's record of how each of ``names`` was run (its arguments, CPU and
    date); empty for a summary written before runs were recorded."""
    if not path.exists():
        return {}
    runs = json.loads(path.read_text()).get("runs", {})
    return {name: run for name, run in runs.items() if name in names}


def kid_figure(rows: list[dict], floor: dict, title: str):
    """KID (x1000, +-1 std over subsets) against training minutes, one line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        ax.errorbar([r["train_seconds"] / 60 for r in mine], [1000 * r["kid"] for r in mine],
                    yerr=[1000 * r["kid_std"] for r in mine], fmt="o-", capsize=3, label=recipe)
    ax.axhline(1000 * floor["kid"], color="grey", ls=":", label="real vs real (floor)")
    ax.set(xlabel="training minutes (2 CPU cores)", ylabel="KID x 1000 (lower is better)", title=title)
    ax.set_yscale("symlog", linthresh=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(SOURCES), required=True)
    parser.add_argument("--source", type=Path, default=None, help="the data's folder or archive")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per recipe")
    parser.add_argument("--score-at", type=float, nargs="+", default=[1.25, 2.5, 5.0],
                        help="training minutes at which to score (the last is also the budget's end)")
    parser.add_argument("--fid-samples", type=int, default=None,
                        help="generated and real images per score (default: 240 shoes, 300 CIFAR)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="ngf (and ndf for DCGAN's D)")
    parser.add_argument("--feature-size", type=int, default=64, help="projected D's Lite0 input side")
    parser.add_argument("--cpu-bf16", action="store_true", help="bfloat16 autocast on the CPU")
    parser.add_argument("--tag", default="", help="appended to the recipe's name in the rows "
                        "(e.g. bf16, w32), so a variant joins the study beside its recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    source = args.source or SOURCES[args.data]
    if not source.exists():
        print(f"SKIPPED: {source} not found; pass --source PATH (see the docstring).")
        return 0
    out = args.out or ROOT / "results" / "benchmarks" / "gan_recipes" / args.data
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    seed_everything(args.seed)
    threads = set_cpu_threads()
    device = pick_device("cpu")
    images = real_images(args.data, source)
    n = args.fid_samples or (240 if args.data == "sneakers" else 300)
    reference, floor = quality.reference_and_floor(images, n, seed=args.seed, device=device)
    print(f"{len(images):,} real images {images.shape[1]} px; floor ({len(reference)} vs "
          f"{floor['n_fake']} real): {quality.describe(floor)}", flush=True)

    if args.cpu_bf16 and not cpu_has_bf16():
        print("note: this CPU has no native bfloat16 (or oneDNN is capped below it): "
              "--cpu-bf16 trains in fp32 here")
    names = {r: f"{r}+{args.tag}" if args.tag else r for r in args.recipes}  # a row's name
    rows = earlier_rows(out / "kid_vs_time.csv", list(names.values()))
    if rows:
        print(f"kept the earlier rows of {sorted({r['recipe'] for r in rows})} from {out / 'kid_vs_time.csv'}")
    for base in args.recipes:
        recipe = names[base]
        config = recipe_config(base, resolution=images.shape[1], batch_size=args.batch_size,
                               ngf=args.width, ndf=args.width, feature_size=args.feature_size,
                               epochs=10**6, cpu_bf16=args.cpu_bf16, seed=args.seed)
        steps_per_epoch = len(images) // config.batch_size

        def score(gan, recipe=recipe):
            result = quality.score(gan.generate(len(reference), seed=args.seed + 1), reference, device,
                                   seed=args.seed)
            print(f"  {recipe} epoch {gan.epoch}: {quality.describe(result)}", flush=True)
            return result

        monitor = EpochMonitor(out / f"grids_{recipe}", 10**6, score=score,
                               score_at_seconds=tuple(60 * m for m in args.score_at), save_every=10**6,
                               keep_best=False)  # where each recipe stands at the budget
        gan, history = train_gan(images, config, device, on_epoch=monitor, progress=False,
                                 max_seconds=60 * max(args.score_at + [args.minutes]))
        if "kid" not in history[-1]:  # the budget ended between marks: score where it stopped
            history[-1].update(score(gan))
        for h in history:
            if "kid" in h:
                rows.append({"recipe": recipe, "steps": h["epoch"] * steps_per_epoch,
                             **{k: h[k] for k in COLUMNS if k in h and k != "recipe"}})
        save_png(image_grid(gan.generate(64, seed=12345)), out / f"samples_{recipe}.png")
        with open(out / "kid_vs_time.csv", "w", newline="") as f:  # rewritten as it grows
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    save_png(image_grid(images[np.random.default_rng(0).choice(len(images), min(64, len(images)), replace=False)]),
             out / "samples_real.png")
    fig = kid_figure(rows, floor, f"{args.data}: {len(reference)} generated vs {len(reference)} real")
    fig.savefig(out / "kid_vs_time.png", dpi=120)
    # each row's own invocation (rows of earlier runs may come from another machine or settings)
    runs = earlier_runs(out / "summary.json", {r["recipe"] for r in rows})
    this_run = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(), "threads": threads,
                "date": time.strftime("%Y-%m-%d")}
    runs.update({name: this_run for name in names.values()})
    write_json(out / "summary.json", {
        "data": args.data, "source": str(source), "n_train": len(images), "resolution": images.shape[1],
        "args": this_run["args"], "runs": runs,
        "recipes": {r: RECIPES[r.split("+")[0]].changes() for r in dict.fromkeys(r["recipe"] for r in rows)},
        "floor": floor,
        "rows": rows,
        "threads": threads, "wall_seconds": round(time.perf_counter() - wall, 1),
        "environment": environment_fingerprint()})
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        last = [r for r in rows if r["recipe"] == recipe][-1]
        print(f"{recipe:>10}: KID {1000 * last['kid']:.1f} ± {1000 * last['kid_std']:.1f} (x1e-3), FID "
              f"{last['fid']:.1f} after {last['train_seconds'] / 60:.1f} min ({last['steps']} steps)")
    print(f"{'floor':>10}: KID {1000 * floor['kid']:.1f} ± {1000 * floor['kid_std']:.1f} (x1e-3), FID "
          f"{floor['fid']:.1f}  [{len(reference)} vs {len(reference)} images]; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
