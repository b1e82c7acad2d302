"""Command line of the training loop (the same loop as notebook 03)::

    python -m helpers.training --dataset demo --model fast --epochs 5

Also under ``torchrun --nproc_per_node=N`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..core.accel import pick_device
from ..data.cache import prepare
from ..gan.demo import demo_fakes
from .config import default_config
from .loop import fit


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aidetect-train",
        description="Train a detector (same loop as notebook 03). Unset options take the "
                    "dataset's default configuration (helpers.training.config.DEFAULTS). Works under "
                    "`torchrun --nproc_per_node=N` (DistributedDataParallel).")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-source", default=None, help="local folder or archive of the dataset")
    p.add_argument("--model", default=None,
                   help="fast, two_scale, resnet18, seed_cnn, cifake_paper, lite0 or lite0_probe")
    p.add_argument("--width", type=int, default=None, help="first-stage channels of `fast` (of the global view of `two_scale`)")
    p.add_argument("--patch", type=int, default=None, help="stem patch side of `fast` (2 on 32x32: 16x16 maps)")
    p.add_argument("--input-size", type=int, default=None,
                   help="lite0, lite0_probe: side in px the pretrained backbone sees (default: the image "
                        "size, at least 64)")
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="resnet18: ImageNet weights (must already be in the torch hub cache)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--translate", type=int, default=None)
    p.add_argument("--cutout", type=int, default=None, help="side of a random mid-grey square per training image")
    p.add_argument("--cpu-amp", dest="cpu_amp", action="store_true", default=None,
                   help="bfloat16 autocast on the CPU (default: measured, whichever is faster here)")
    p.add_argument("--no-cpu-amp", dest="cpu_amp", action="store_false",
                   help="fp32 on the CPU, whatever the probe would choose")
    p.add_argument("--degrade", default=None, help="training-time degradations: none, cnndet, cnndet_p01, blur_rescale_crop, all, upload (helpers/training/degrade.py)")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="training seed, and split seed unless --split-seed")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the train/val/test split (default: --seed); vary --seed alone to "
                        "measure seed noise on one split")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--out-dir", default=None, help="default: results/<dataset>/models/")
    p.add_argument("--quiet", action="store_true")
    return p


#: How long the other processes wait for rank 0 to build the dataset's cache (decoding CIFAKE's
#: 120,000 files on a small machine takes far longer than NCCL's default 10 minutes).
CACHE_TIMEOUT = timedelta(hours=3)


def init_distributed(device: str):
    """Join the ``torchrun`` process group; returns the group the cache barrier waits on.

    On CUDA the process's GPU (``LOCAL_RANK``) is set *before* the NCCL group is made and
    passed to it (``device_id``), so NCCL binds each process to its own GPU rather than all to
    GPU 0. The wait for rank 0's cache goes through a separate gloo group with
    :data:`CACHE_TIMEOUT` (a CPU barrier, no GPU held), while the training collectives keep
    NCCL's default timeout, short enough to report a real hang.
    """
    cuda = pick_device(device).type == "cuda"
    device_id = None
    if cuda:
        device_id = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device_id)
    dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device_id)
    return dist.new_group(backend="gloo", timeout=CACHE_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    """``aidetect-train`` / ``python -m helpers.training``: prepare the data, train, report."""

    args = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    cache_group = init_distributed(args.device) if distributed else None
    rank = int(os.environ.get("RANK", "0"))
    threads = args.threads
    if distributed and threads is None:
        threads = max(1, (os.cpu_count() or 1) // world)
    config = default_config(
        args.dataset, model=args.model, width=args.width, patch=args.patch, pretrained=args.pretrained,
        input_size=args.input_size,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, translate=args.translate, patience=args.patience,
        cutout=args.cutout, degrade=args.degrade, cpu_amp=args.cpu_amp,
        seed=args.seed, device=args.device, threads=threads, amp=args.amp,
        compile=args.compile)
    try:
        if rank != 0:
            dist.barrier(group=cache_group)  # rank 0 builds the cache first
        split_seed = args.seed if args.split_seed is None else args.split_seed
        cache = prepare(args.dataset, args.data_source, config.image_size, split_seed,
                        progress=rank == 0 and not args.quiet, make_fakes=demo_fakes)
        if distributed and rank == 0:
            dist.barrier(group=cache_group)
        result = fit(cache, config, args.out_dir, progress=not args.quiet, resume=args.resume)
        if rank == 0:
            m, config = result.metrics, result.config
            print(f"{config.model} on {config.dataset}: best val accuracy {m['val_acc']:.4f} "
                  f"(loss {m['val_loss']:.4f}, epoch {m['epoch']}/{config.epochs}); "
                  f"{result.seconds:.1f} s, {result.images_per_s:.0f} images/s"
                  f"{f' on {world} processes' if distributed else ''}; saved {result.checkpoint}")
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
