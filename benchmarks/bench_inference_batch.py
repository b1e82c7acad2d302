"""Which batch size scores fastest on this machine: images/s of the detectors' inference path at
several batch sizes, beside the old fixed batch of 512, in one run.

    .venv/bin/python benchmarks/bench_inference_batch.py [--batch-sizes 512 256 128 64 32 16]
        [--seconds 2] [--rounds 3] [--device cpu] [--only demo CIFAKE shoes]

Each line times :func:`helpers.core.scoring.predict_logits` (what ``Detector.predict_proba``
runs on every chunk) on random uint8 images moved as ``predict_proba`` moves them
(``images_to_device``) for ``--seconds`` after a warm-up, in ``--rounds`` interleaved rounds (median and
range reported). The models are the project's defaults and the ImageNet baselines at their
datasets' sizes, built as ``helpers.training.config.default_config`` builds them (fresh
weights: speed does not depend on them). The batch the project uses on this device
(``helpers.core.accel.inference_batch_size``) is marked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core.accel import cpu_has_bf16, cpu_name, images_to_device, inference_batch_size, set_cpu_threads
from helpers.core.models import build_model
from helpers.core.scoring import predict_logits
from helpers.training.config import default_config

# (label, dataset, model): the defaults of each dataset and the pretrained baselines
CASES = [("demo default", "demo", None), ("CIFAKE default", "cifake", None),
         ("CIFAKE fast", "cifake", "fast"), ("CIFAKE lite0_probe", "cifake", "lite0_probe"),
         ("shoes default", "sneakers", None), ("shoes lite0", "sneakers", "lite0")]


def rate(model: torch.nn.Module, images: torch.Tensor, batch_size: int, seconds: float) -> float:
    """Images per second of ``predict_logits`` over ``images`` in batches of ``batch_size``."""
    mean = torch.full((3,), 0.5, device=images.device)
    std = torch.full((3,), 0.25, device=images.device)
    predict_logits(model, images[:batch_size], mean, std, batch_size)  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        predict_logits(model, images, mean, std, batch_size)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        done += len(images)
    return done / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 256, 128, 64, 32, 16])
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="time only the cases whose label contains one of these, e.g. shoes")
    args = parser.parse_args(argv)

    threads = set_cpu_threads(None)
    device = torch.device(args.device)
    chosen = inference_batch_size(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, native bfloat16: "
          f"{'yes' if cpu_has_bf16() else 'no'}), {threads} threads, torch {torch.__version__}, "
          f"device {device}, load average {load:.2f} at start")
    print(f"images/s, median of {args.rounds} rounds (range); '*' = the batch the project uses here "
          f"({chosen}); ratios against batch 512, the previous fixed batch\n")
    torch.manual_seed(0)
    for label, dataset, name in CASES:
        if args.only and not any(text in label for text in args.only):
            continue
        config = default_config(dataset, model=name)
        model = build_model(config.model, config.image_size, **config.model_options).eval().to(device)
        size = config.image_size
        n = max(args.batch_sizes) * 2
        # as predict_proba feeds it: (N, H, W, 3) uint8 through images_to_device
        images = images_to_device(np.random.default_rng(0).integers(
            0, 256, (n, size, size, 3), dtype=np.uint8), device)
        rates: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
        for _ in range(args.rounds):
            for b in args.batch_sizes:
                rates[b].append(rate(model, images, b, args.seconds))
        median = {b: float(np.median(r)) for b, r in rates.items()}
        base = median.get(512)
        print(f"{label}: {config.model} {config.model_options or ''} at {size}x{size}")
        for b in args.batch_sizes:
            ratio = f"x{median[b] / base:.2f}" if base else ""
            mark = "*" if b == chosen else " "
            print(f"  {mark} batch {b:4d}  {median[b]:9,.0f} images/s  "
                  f"({min(rates[b]):,.0f}-{max(rates[b]):,.0f})  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
