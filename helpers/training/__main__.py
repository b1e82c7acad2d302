"""Command line of the training loop (the same loop as notebook 03)::

    python -m helpers.training --dataset demo --model fast --epochs 5

Also under ``torchrun --nproc_per_node=N`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import os
import typing
from dataclasses import fields
from datetime import timedelta

import torch
import torch.distributed as dist

from ..core import models
from ..core.accel import pick_device
from ..data.cache import prepare
from ..gan.demo import demo_fakes
from .config import TrainConfig, default_config, field_help
from .loop import fit

#: Options of a run that are not TrainConfig fields (where the data is, where the model goes).
RUN_OPTIONS = ("data_source", "split_seed", "resume", "out_dir", "quiet")


def _field_type(name: str):
    """The argparse type of a TrainConfig field: ``int | None`` -> int, ``bool`` -> a flag."""
    hint = typing.get_type_hints(TrainConfig)[name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return kinds[0]


def _parser() -> argparse.ArgumentParser:
    """The command line, generated from :class:`TrainConfig`: one flag per field (``--batch-size``;
    booleans as ``--amp/--no-amp``), its type from the annotation and its help from the field's
    comment, all defaulting to None so :func:`default_config` fills in the dataset's measured
    default; an unknown flag is refused (argparse exits with status 2)."""
    p = argparse.ArgumentParser(
        prog="aidetect-train",
        description="Train a detector (same loop as notebook 03). Unset options take the "
                    "dataset's default configuration (helpers.training.config.DEFAULTS). Works under "
                    "`torchrun --nproc_per_node=N` (DistributedDataParallel).")
    helps = field_help()
    options = p.add_argument_group("model options", "declared by each model's @register in "
                                   "helpers/core/models.py; a model refuses one it does not take")
    for f in fields(TrainConfig):
        kind, flag = _field_type(f.name), "--" + f.name.replace("_", "-")
        text = helps[f.name] or f"TrainConfig.{f.name}"
        if f.name == "model":
            text += f" (one of {', '.join(sorted(models.MODELS))}; default: the dataset's)"
        group = options if f.name in models.option_types() else p
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, type=kind, default=None,
                               help=f"{text} [default: the dataset's, else {f.default}]")
    p.add_argument("--data-source", default=None, help="local folder or archive of the dataset")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the train/val/test split (default: --seed); vary --seed alone to "
                        "measure seed noise on one split")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--out-dir", default=None, help="default: results/<dataset>/models/")
    p.add_argument("--quiet", action="store_true")
    return p


def config_of(args: argparse.Namespace, **extra) -> TrainConfig:
    """The TrainConfig that parsed ``args`` ask for: the dataset's default with the flags given."""
    settings = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    settings.update({k: v for k, v in extra.items() if v is not None})
    return default_config(settings.pop("dataset") or "demo", **settings)


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
    cache_group = init_distributed(args.device or "auto") if distributed else None
    rank = int(os.environ.get("RANK", "0"))
    threads = args.threads
    if distributed and threads is None:
        threads = max(1, (os.cpu_count() or 1) // world)
    config = config_of(args, threads=threads)
    dataset = config.dataset
    try:
        if rank != 0:
            dist.barrier(group=cache_group)  # rank 0 builds the cache first
        split_seed = config.seed if args.split_seed is None else args.split_seed
        cache = prepare(dataset, args.data_source, config.image_size, split_seed,
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
