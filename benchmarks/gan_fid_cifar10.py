"""A GAN (DCGAN by default, or any recipe) on CIFAR-10 photos: FID and KID against epochs, with sample counts and wall time.

    # the real measurement, on a GPU (DCGAN literature: FID 42-47 on CIFAR-10; target <= 45)
    .venv/bin/python benchmarks/gan_fid_cifar10.py --device cuda --epochs 200 --fid-samples 10000 --fid-every 20
    # a short check on a CPU (minutes): a couple of epochs, a few hundred FID samples
    .venv/bin/python benchmarks/gan_fid_cifar10.py --device cpu --epochs 2 --fid-samples 200

Trains this project's DCGAN (:mod:`helpers.gan`, the paper's settings: width 64, batch 128,
Adam 2e-4, beta1 0.5) on the 10,000 CIFAR-10 test photos in
``../shared/data/cifar10-test-jpg.zip`` (``test/<class>/NNNN.jpg``; skipped with a message
when absent, or give ``--zip``), and scores it with :mod:`helpers.gan.quality` every
``--fid-every`` epochs and after the last: FID and KID of ``--fid-samples`` generated images
against as many of the training photos (all 10,000 for the standard-sized protocol), plus
the diversity ratio. With enough photos it also scores a second, disjoint set of *real*
photos against the same reference: the FID that sample size gives a perfect generator.

Writes ``fid_vs_epochs.csv``, ``summary.json`` (settings, environment, per-epoch losses,
timings) and ``samples.png`` to ``--out`` (default ``results/benchmarks/gan_fid_cifar10``);
``--save-checkpoint`` adds ``models/gan.pt``.

Note: these are 10k *test* photos, JPEG re-encoded, not the 50k training set of the
literature; FID against a 10k reference is slightly higher than against 50k.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.core.accel import pick_device, set_cpu_threads
from helpers.core.images import BadImageError, decode
from helpers.core.repro import environment_fingerprint, seed_everything, write_json
from helpers.data.sources import iter_source
from helpers.gan import quality
from helpers.gan.config import RECIPES, recipe_config
from helpers.gan.monitor import image_grid, save_checkpoint, save_png
from helpers.gan.train import GAN, train_gan

DEFAULT_ZIP = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.zip"
TARGET_FID = 45.0
PROTOCOL_SAMPLES = 10_000  # generated and real images of the standard-sized FID
CSV_COLUMNS = ("epoch", "steps", "train_seconds", "wall_seconds", "fid", "kid", "kid_std", "n_fake",
               "n_real", "fid_method", "fid_projected", "fid_projected_n", "fid_infinity", "diversity_ratio", "pixel_diversity_fake", "score_seconds")


def load_photos(source: Path, max_images: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Every ``.jpg`` of the archive decoded to 32x32 RGB uint8 (project rule), sorted by name."""
    images, names, skipped = [], [], []
    for rel, read in iter_source(source):
        if not rel.lower().endswith((".jpg", ".jpeg")):
            continue
        try:
            images.append(decode(read(), 32, rel)[0])
            names.append(rel)
        except BadImageError as err:
            skipped.append(str(err))
    if skipped:
        print(f"skipped {len(skipped)} unreadable files, e.g. {skipped[0]}")
    if not images:
        raise SystemExit(f"{source}: no .jpg images inside")
    images = np.stack(images)
    if max_images and max_images < len(images):
        keep = np.sort(np.random.default_rng(0).choice(len(images), max_images, replace=False))
        images, names = images[keep], [names[i] for i in keep]
    return images, names


def steps_to_target(rows: list[dict], last: int = 4) -> float | None:
    """Steps at which a power law FID = a * steps^b, fitted to the last ``last`` projected
    10k-sample FIDs, reaches the target; None without a falling trend to extrapolate."""
    points = [(r["steps"], r["fid_projected"]) for r in rows if r.get("fid_projected")][-last:]
    if len(points) < 3:
        return None
    slope, intercept = np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)
    if slope >= 0:
        return None
    return float(np.exp((np.log(TARGET_FID) - intercept) / slope))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="CIFAR-10 JPEG archive or folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fid-samples", type=int, default=200,
                        help="generated images per score (and real ones, up to all photos)")
    parser.add_argument("--fid-every", type=int, default=0, help="also score every k epochs (0: last only)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=64, help="ngf = ndf")
    parser.add_argument("--lr", type=float, default=2e-4, help="for G and D")
    parser.add_argument("--spectral-norm", action="store_true", help="spectral normalisation in D")
    parser.add_argument("--recipe", default="dcgan", choices=sorted(RECIPES),
                        help="helpers.gan.config.RECIPES (benchmarks/gan_recipes.py compares them)")
    parser.add_argument("--max-images", type=int, default=None, help="train on a random subset")
    parser.add_argument("--no-real-floor", action="store_true", help="skip the real-vs-real FID")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save-checkpoint", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gan_fid_cifar10")
    args = parser.parse_args(argv)

    if not args.zip.exists():
        print(f"SKIPPED: {args.zip} not found. This benchmark needs the CIFAR-10 test photos as "
              "JPEGs (test/<class>/NNNN.jpg); pass --zip PATH to point at a copy.")
        return 0
    wall = time.perf_counter()
    seed_everything(args.seed, deterministic=False)  # speed over bit-reproducibility on GPUs
    threads = set_cpu_threads(args.threads)
    device = pick_device(args.device)
    images, _ = load_photos(args.zip, args.max_images)
    print(f"{len(images):,} photos from {args.zip.name} in {time.perf_counter() - wall:.1f} s; device "
          f"{device}{'' if device.type != 'cpu' else f' ({threads} threads)'}")

    n_real = min(args.fid_samples, len(images))
    feature_batch = 250 if device.type == "cuda" else 50
    t = time.perf_counter()
    reference = quality.QualityReference.from_images(images, n_real, seed=args.seed, device=device,
                                                     batch_size=feature_batch, progress=True)
    print(f"reference: {n_real} real photos, Inception features in {time.perf_counter() - t:.1f} s "
          f"({(time.perf_counter() - t) / n_real:.3f} s per image)")
    floor = None
    used = reference.indices if reference.indices is not None else np.arange(len(images))
    rest = np.setdiff1d(np.arange(len(images)), used)
    if not args.no_real_floor and len(rest) >= args.fid_samples:
        other = images[np.random.default_rng(args.seed + 1).choice(rest, args.fid_samples, replace=False)]
        floor = quality.score(other, reference, device, batch_size=feature_batch, seed=args.seed,
                              project_to=PROTOCOL_SAMPLES)
        print(f"real-vs-real floor at this sample size: {quality.describe(floor)}")
    elif not args.no_real_floor:
        print(f"real-vs-real floor skipped: needs {args.fid_samples} photos outside the reference, "
              f"{len(rest)} left")

    config = recipe_config(args.recipe, resolution=32, ngf=args.width, ndf=args.width,
                           batch_size=args.batch_size, epochs=args.epochs, lr_g=args.lr, lr_d=args.lr,
                           seed=args.seed, **({"spectral_norm": True} if args.spectral_norm else {}))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    train_seconds = 0.0

    def on_epoch(model: GAN, stats: dict) -> None:
        nonlocal train_seconds
        train_seconds += stats["seconds"]
        due = (args.fid_every and model.epoch % args.fid_every == 0) or model.epoch == args.epochs
        print(f"epoch {model.epoch}: loss D {stats['loss_d']:.3f} G {stats['loss_g']:.3f}  D(x) "
              f"{stats['d_x']:.2f} D(G(z)) {stats['d_g_z']:.2f}  {stats['iters_per_s']:.1f} it/s", flush=True)
        if not due:
            return
        result = quality.score(model.generate(args.fid_samples, seed=args.seed + 1), reference, device,
                               batch_size=feature_batch, seed=args.seed,
                               project_to=PROTOCOL_SAMPLES if args.fid_samples < PROTOCOL_SAMPLES else None)
        stats.update(result)
        row = {**{k: result[k] for k in CSV_COLUMNS if k in result},
               "epoch": model.epoch, "steps": model.epoch * (len(images) // args.batch_size),
               "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
               "score_seconds": round(result["score_seconds"], 1)}
        rows.append(row)
        print(f"  -> {quality.describe(result)}", flush=True)
        with open(args.out / "fid_vs_epochs.csv", "w", newline="") as f:  # rewritten as it grows
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    model, history = train_gan(images, config, device, on_epoch=on_epoch, progress=False)
    save_png(image_grid(model.generate(100, seed=args.seed + 2), columns=10), args.out / "samples.png")
    if args.save_checkpoint:
        save_checkpoint(model, args.out / "models" / "gan.pt", history=history)
    final = rows[-1]
    summary = {
        "benchmark": f"{args.recipe} FID on CIFAR-10 test photos", "recipe": args.recipe, "source": str(args.zip), "n_train": len(images),
        "config": asdict(config), "device": str(device), "threads": threads,
        "final": final, "fid_vs_epochs": rows, "real_floor": floor, "target_fid": TARGET_FID,
        "target_met": final["fid"] <= TARGET_FID and final["n_fake"] >= 10_000,
        "history": history, "wall_seconds": round(time.perf_counter() - wall, 1),
        "environment": environment_fingerprint(),
    }
    summary["steps_to_target"] = steps_to_target(rows)
    write_json(args.out / "summary.json", summary)
    print(f"\nfinal after {args.epochs} epochs ({final['steps']} steps, {final['train_seconds']:.0f} s "
          f"training, {summary['wall_seconds']:.0f} s wall): FID {final['fid']:.2f}, KID "
          f"{1000 * final['kid']:.2f}e-3 on {final['n_fake']} generated vs {final['n_real']} real images")
    verdict = ("MET" if summary["target_met"] else
               "NOT MET" if final["n_fake"] >= 10_000 else "not judged (needs --fid-samples 10000)")
    print(f"target FID <= {TARGET_FID:g} at 10k samples: {verdict}")
    if summary["steps_to_target"] is not None:
        print(f"projection: FID at 10k samples {final['fid_projected']:.1f} after {final['steps']} steps; "
              f"a power law through the last scores reaches {TARGET_FID:g} after about "
              f"{summary['steps_to_target']:,.0f} steps ({summary['steps_to_target'] / max(1, final['steps']) * final['train_seconds'] / 3600:.1f} h "
              f"of training at this run's speed) - an extrapolation, not a measurement")
    print(f"wrote {args.out / 'fid_vs_epochs.csv'} and {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
