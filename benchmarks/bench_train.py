"""Training throughput: this project's loop vs a seed-style loop, side by side in one process.

Baseline (what the seed notebooks did): torchvision ``ImageFolder`` over JPEG files, decoded
and converted by a ``DataLoader`` every epoch, fp32, each batch copied to the device.
Project: the images decoded once into a uint8 array that stays on the device, batched
augmentation there, channels_last, mixed precision on CUDA - ``helpers.training.loop.fit``. On a CPU
with native bfloat16 arithmetic (AVX512-BF16, AMX) the project loop is timed twice, in fp32
and with bfloat16 autocast (``cpu_amp``), so each decision's share is visible.

Both train the same model (``--models``, each in turn: ``fast`` at the CIFAKE default width,
and the CIFAKE paper's small CNN, whose own compute is light enough that the data pipeline
counts) for the same number of epochs on the same 32x32 JPEGs: the CIFAR-10 test photos in
``../shared/data`` (labels: first five classes vs last five; only throughput matters here).
Also prints the memory a 120k-image 32x32 uint8 cache takes, and, on CUDA (or wherever
``--epoch-images`` asks for it), the time of one epoch of the CIFAKE default config over 100k
random 32x32 images: that needs no data files, so it runs without ``../shared`` too.

    python benchmarks/bench_train.py [--images 5000] [--epochs 2] [--device auto]
        [--models fast,cifake_paper] [--rounds 3] [--malloc tuned|glibc] [--epoch-images N]

``--malloc glibc`` leaves glibc's malloc at its defaults for the whole process (both loops;
the same as ``REUSE_FREED_MEMORY=0``), to measure what :func:`helpers.core.accel.reuse_freed_memory`
is worth.

Every loop runs ``--rounds`` times, interleaved with the others, and the median images/s is
printed with the range: on a shared machine one timing can be off by a third.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.core import images as image_rule
from helpers.core.accel import cpu_has_bf16, pick_device, set_cpu_threads
from helpers.core.models import build_model
from helpers.core.repro import seed_everything
from helpers.data.cache import ImageCache
from helpers.training.config import TrainConfig, default_config
from helpers.training.loop import fit

ZIP = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.zip"


def extract(n: int, folder: Path) -> Path:
    """The first ``n`` JPEGs (round-robin over classes) into ``folder/<class>/``."""
    with zipfile.ZipFile(ZIP) as archive:
        names = sorted(m for m in archive.namelist() if m.endswith(".jpg"))
        by_class: dict[str, list[str]] = {}
        for name in names:
            by_class.setdefault(name.split("/")[-2], []).append(name)
        chosen = [by_class[c][i] for i in range(max(map(len, by_class.values())))
                  for c in sorted(by_class) if i < len(by_class[c])][:n]
        for name in chosen:
            target = folder / name.split("/")[-2] / name.split("/")[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    return folder


def baseline_epochs(folder: Path, config: TrainConfig, device: torch.device, epochs: int) -> float:
    """Seed-style loop; returns training images per second over ``epochs``."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize((0.5,) * 3, (0.25,) * 3)])
    dataset = datasets.ImageFolder(str(folder), transform=transform,
                                   target_transform=lambda c: float(c >= 5))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                                         num_workers=2, drop_last=True, persistent_workers=False)
    model = build_model(config.model, 32, **config.model_options).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True)
    loss_fn = nn.BCEWithLogitsLoss()
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # host-to-device every batch
            loss = loss_fn(model(x).flatten(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def spread(values: list[float]) -> str:
    """The range of several rounds' figures, for the line of their median."""
    return f"({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""


def project_cache(folder: Path, size: int = 32) -> ImageCache:
    """Decode the same files once (the project's rule) into an in-memory cache."""
    files = sorted(folder.rglob("*.jpg"))
    arrays = np.stack([image_rule.decode_file(f, size)[0] for f in files])
    labels = np.array([sorted(p.name for p in folder.iterdir()).index(f.parent.name) >= 5
                       for f in files], dtype=np.uint8)
    split = np.zeros(len(files), dtype=np.int8)
    split[::20] = 1  # a small validation split: fit() scores it after every epoch
    return ImageCache(images=arrays, labels=labels, split=split,
                           files=np.array([f.name for f in files]),
                           meta={"dataset": "cifake", "data_fingerprint": "bench"}, path=folder)


def synthetic_epoch_seconds(device: torch.device, n: int, epochs: int = 3, **overrides) -> float:
    """Seconds of one training epoch of the CIFAKE default config (``overrides`` on top) over
    ``n`` random 32x32 images, the mean of epochs 2..``epochs`` (the first pays for warm-up and
    autotuning)."""
    rng = np.random.default_rng(0)
    cache = ImageCache(
        images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        # every 50th image is validation; labels alternate in blocks of 50 so that both
        # classes are in it (fit refuses a split of one class)
        labels=(np.arange(n) // 50 % 2).astype(np.uint8), split=(np.arange(n) % 50 == 0).astype(np.int8),
        files=np.array(["random"] * n), meta={"dataset": "cifake", "data_fingerprint": "synthetic"},
        path=Path("random-images"))
    config = default_config("cifake", device=str(device), epochs=epochs, **overrides)
    with tempfile.TemporaryDirectory() as out:
        result = fit(cache, config, out_dir=out, progress=False, resume=False)
    return float(result.history["train_seconds"].iloc[1:].mean())


def compare_loops(args: argparse.Namespace, device: torch.device) -> None:
    """The seed-style loop and the project loop, interleaved, on the shared JPEGs."""
    threads = set_cpu_threads()
    cpu = f"{threads} CPU threads, {torch.backends.cpu.get_cpu_capability()}, native bfloat16: " \
          f"{'yes' if cpu_has_bf16() else 'no'}, malloc {args.malloc}"
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else cpu}), "
          f"batch 256, {args.images:,} images x {args.epochs} epochs, median of {args.rounds} "
          "interleaved rounds (range in brackets)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = extract(args.images, Path(tmp) / "jpg")
        start = time.perf_counter()
        cache = project_cache(folder)
        decode_s = time.perf_counter() - start
        print(f"  (the project decodes the {args.images:,} JPEGs once: {decode_s:.1f} s)")
        for name in args.models.split(","):
            config = default_config("cifake", model=name, device=str(device), epochs=args.epochs,
                                    batch_size=256)
            precisions = [False, True] if device.type == "cpu" and cpu_has_bf16() else [config.cpu_amp]
            seed_rates: list[float] = []
            project_rates: dict[bool, list[float]] = {p: [] for p in precisions}
            for _ in range(args.rounds):  # interleaved, so a neighbour's burst hits every loop alike
                seed_everything(0, deterministic=False)
                seed_rates.append(baseline_epochs(folder, config, device, args.epochs))
                for cpu_amp in precisions:
                    run = replace(config, cpu_amp=cpu_amp)
                    result = fit(cache, run, out_dir=Path(tmp) / "models", progress=False, resume=False)
                    project_rates[cpu_amp].append(result.images_per_s)
            base = float(np.median(seed_rates))
            print(f"  {name} {config.model_options or ''}:")
            print(f"    seed-style loop (ImageFolder + DataLoader, fp32, H2D per batch): "
                  f"{base:8,.0f} images/s  {spread(seed_rates)}")
            for cpu_amp in precisions:
                ours = float(np.median(project_rates[cpu_amp]))
                bf16 = cpu_amp and cpu_has_bf16()  # asked for, but only used where native
                what = ("bfloat16 autocast" if bf16 else "fp32") if device.type == "cpu" else "AMP"
                print(f"    project loop (uint8 on device, batched augmentation), {what + ':':<18}"
                      f"{ours:8,.0f} images/s  {spread(project_rates[cpu_amp])}  x{ours / base:.1f}")
        print("  (target: the project loop >= 5x the seed-style loop on CPU at 32x32)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="fast,cifake_paper", help="comma-separated model names")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat every loop this many times, interleaved; medians are printed")
    parser.add_argument("--malloc", choices=["tuned", "glibc"], default="tuned",
                        help="glibc: leave malloc's defaults (both loops), to measure the tuning")
    parser.add_argument("--epoch-images", type=int, default=None,
                        help="time one epoch over this many random images (default: 100,000 on "
                             "CUDA, none elsewhere)")
    args = parser.parse_args()
    if args.malloc == "glibc":
        os.environ["REUSE_FREED_MEMORY"] = "0"

    cache_bytes = 120_000 * 32 * 32 * 3
    print(f"CIFAKE cache, 120,000 x 32x32x3 uint8: {cache_bytes / 2**20:.0f} MiB "
          f"({cache_bytes / 1e6:.0f} MB; target < 400 MB)")
    device = pick_device(args.device)
    if ZIP.exists():
        compare_loops(args, device)
    else:
        print(f"SKIPPED the throughput comparison: {ZIP} not found (shared CI data is optional)")
    epoch_images = args.epoch_images if args.epoch_images is not None else (
        100_000 if device.type == "cuda" else 0)
    if epoch_images:
        seconds = synthetic_epoch_seconds(device, epoch_images)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"one epoch of the CIFAKE default config ({default_config('cifake').model}) over "
              f"{epoch_images:,} random 32x32 images on {where}: {seconds:.2f} s "
              "(mean of epochs 2-3; target <= 2 s for 100,000 on an H100-class GPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
