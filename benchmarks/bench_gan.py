"""DCGAN training speed: the project's data path next to a naive baseline, in one run.

    .venv/bin/python benchmarks/bench_gan.py [--device auto] [--resolution 32] [--width 64]
        [--batch-size 128] [--seconds 5] [--repeats 3] [--threads N]

Both variants run the same DCGAN update (:meth:`helpers.gan.train.GAN.step`: one discriminator
and one generator step, autocast on CUDA) on random uint8 images; only the data path differs.

1. baseline, the usual tutorial loop: the images as float32 in host memory, each batch sliced,
   flipped and scaled there, then copied to the device (pageable memory), and the four
   statistics read back with ``.item()`` after every step (a host-device sync per step);
2. project (:meth:`~helpers.gan.train.GAN.train_epoch`): the images as uint8 on the device
   (a quarter of the memory), batches gathered, flipped and scaled there, statistics kept on
   the device and read once per epoch.

Each variant is timed ``--repeats`` times, alternating, for ``--seconds`` each; the median is
printed (a shared machine is noisy). On a CPU there is no copy to save, so the two should be
close; the gap is a GPU matter. With ``--device auto`` a GPU, if any, is timed after the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core.accel import images_to_device, set_cpu_threads
from helpers.gan.config import GANConfig
from helpers.gan.train import GAN


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def baseline_rate(gan: GAN, host: np.ndarray, seconds: float) -> float:
    """Steps/s of the naive loop: float32 host batches copied per step, stats read per step."""
    bs, device = gan.config.batch_size, gan.device
    rng = np.random.default_rng(0)
    steps, start = 0, None
    while True:
        index = rng.integers(0, len(host), bs)
        batch = host[index]
        if rng.random() < 0.5:
            batch = batch[:, :, :, ::-1]
        real = torch.from_numpy(np.ascontiguousarray(batch) / np.float32(127.5) - np.float32(1.0)).to(device)
        gan.train_step(real)  # .item() x 4: waits for the device every step
        if start is None:  # the first step is the warm-up
            _sync(device)
            start = time.perf_counter()
            continue
        steps += 1
        if time.perf_counter() - start >= seconds:
            _sync(device)
            return steps / (time.perf_counter() - start)


def project_rate(gan: GAN, data: torch.Tensor, seconds: float) -> float:
    """Steps/s of :meth:`GAN.train_epoch` over uint8 data already on the device."""
    steps_per_epoch = len(data) // gan.config.batch_size
    gan.train_epoch(data)  # warm-up
    _sync(gan.device)
    epochs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        gan.train_epoch(data)
        epochs += 1
    _sync(gan.device)
    return epochs * steps_per_epoch / (time.perf_counter() - start)


def bench_device(device: torch.device, args) -> dict[str, float]:
    config = GANConfig(resolution=args.resolution, ngf=args.width, ndf=args.width,
                       batch_size=args.batch_size, seed=0)
    n = args.batch_size * args.batches
    images = np.random.default_rng(0).integers(0, 256, (n, args.resolution, args.resolution, 3),
                                               dtype=np.uint8)
    host = images.transpose(0, 3, 1, 2).astype(np.float32)  # the baseline's float32 NCHW copy
    data = images_to_device(images, device)
    gan = GAN(config, device)
    params = sum(p.numel() for p in gan.G.parameters()) + sum(p.numel() for p in gan.D.parameters())
    print(f"\n{device.type.upper()}: DCGAN {args.resolution}x{args.resolution}, width {args.width}, "
          f"batch {args.batch_size}, {params / 1e6:.2f} M parameters (G + D)"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads"))
    runs: dict[str, list[float]] = {"baseline": [], "project": []}
    for _ in range(args.repeats):  # alternate, so drifting load hits both alike
        runs["baseline"].append(baseline_rate(gan, host, args.seconds))
        runs["project"].append(project_rate(gan, data, args.seconds))
    result = {name: statistics.median(rates) for name, rates in runs.items()}
    labels = {"baseline": "baseline: float32 host batches, copy + .item() per step",
              "project": "project: uint8 on device, stats read once per epoch"}
    for name, rate in result.items():
        spread = ", ".join(f"{r:.2f}" for r in runs[name])
        print(f"  {labels[name]:<58} {rate:8.2f} it/s  {rate * args.batch_size:9,.0f} images/s"
              f"   x{rate / result['baseline']:.2f}   (runs: {spread})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CPU, then a GPU if any), cpu or cuda")
    parser.add_argument("--resolution", type=int, default=32, choices=(32, 64))
    parser.add_argument("--width", type=int, default=64, help="ngf = ndf (64: the paper's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8, help="images in the pool, in batches")
    parser.add_argument("--seconds", type=float, default=5.0, help="per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    threads = set_cpu_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} threads, load average "
          f"{load:.2f} at start (a shared machine runs slower)")
    devices = [torch.device(args.device)] if args.device != "auto" else [torch.device("cpu")]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        bench_device(device, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
