"""The detector's training loop, one for every model (airbench's recipe, Keller Jordan 2024).

* The uint8 cache is the dataset: it moves to the device once and is never decoded again;
  :class:`~helpers.training.batches.TrainingBatches` augments on the device and only moves
  pixels (mirror, shift, Cutout), because pixel-level artefacts are what a detector reads.
* channels_last; mixed precision on CUDA, bfloat16 on CPUs where a probe measured it faster.
* SGD with Nesterov momentum, linear warm-up then linear decay to zero, label smoothing,
  weight decay on weights only.
* The saved epoch is the best on validation (:func:`helpers.core.selection.validation_rank`);
  the decision threshold is then chosen on validation and saved with it.

Every epoch's randomness comes from ``(seed, epoch)``, so a run resumed from
``<model>.last.pt`` ends exactly where an uninterrupted one does, and two CPU runs with one
seed give identical numbers. Under ``torchrun`` each process trains on its shard (DDP).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core import paths
from ..core.accel import (
    channel_stats,
    deterministic_by_default,
    images_to_device,
    pick_device,
    set_cpu_threads,
)
from ..core.detector import Detector
from ..core.models import build_model, input_normalisation
from ..core.postprocess import validation_robustness
from ..core.precision_probe import choose_cpu_amp
from ..core.repro import atomic_path, environment_fingerprint, seed_everything
from ..core.scoring import choose_threshold, predict_logits
from ..core.selection import validation_rank
from ..data.cache import check_counts, split_counts
from .batches import TrainingBatches
from .config import TrainConfig, TrainResult
from .degrade import run_name
from .domain import add_domain_check
from .learner import Learner, make_learner, train_epoch
from .probe import fit_linear_head, pooled_features
from .resume import Progress, cpu_state, resume_progress, save_resume_point


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            config: TrainConfig) -> torch.Tensor:
    """Validation logits, one pass per image, as ``predict`` and notebook 05 score."""
    was_training = model.training
    model.eval()
    logits = predict_logits(model, images, mean, std, config.eval_batch_size, bool(config.cpu_amp))
    model.train(was_training)
    return logits


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, config: TrainConfig) -> dict[str, float]:
    """Validation loss (without smoothing) and accuracy at 0.5 of uint8 images on the device."""
    logits = _logits(model, images, mean, std, config)
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    acc = ((logits > 0).float() == labels).float().mean().item()
    return {"val_loss": loss, "val_acc": acc, "val_nonfinite": int((~torch.isfinite(logits)).sum())}


def _resolve_cpu_amp(config: TrainConfig, size: int, device: torch.device, batch: int,
                     announce: bool) -> tuple[TrainConfig, dict | None]:
    """``config`` with ``cpu_amp`` decided: as given, or (None) by the cached probe of
    :func:`helpers.core.precision_probe.choose_cpu_amp` at this run's batch size. Off the CPU: False."""
    if device.type != "cpu":
        return replace(config, cpu_amp=False), None
    if config.cpu_amp is not None:
        return config, None
    key = {"model": config.model, **config.model_options}
    use, probe = choose_cpu_amp(lambda: build_model(config.model, size, **config.model_options), key,
                                size, batch, paths.probe_cache())
    if announce:
        rates = (f"bfloat16 {probe['bf16']:,.0f} vs fp32 {probe['fp32']:,.0f} training images/s"
                 f"{' (measured earlier on this machine)' if probe.get('cached') else ''}"
                 if "fp32" in probe else probe["reason"])
        print(f"CPU precision: {'bfloat16 autocast' if use else 'fp32'} ({rates}); set cpu_amp "
              f"(notebook 03: CPU_AMP) to True or False to choose")
        if probe.get("unsteady"):
            print(f"  not kept for later runs: {probe['unsteady']}; measured again next time")
    return replace(config, cpu_amp=use), probe


def _device(config: TrainConfig, rank: int, world: int) -> torch.device:
    device = pick_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if device.type == "cpu":
        set_cpu_threads(config.threads)
    seed_everything(config.seed, config.deterministic if config.deterministic is not None
                    else deterministic_by_default(device))
    return device


def _checked_splits(cache, config: TrainConfig):
    """The train and val images and labels of ``cache``, after checking it suits ``config``."""
    size = int(cache.images.shape[1])
    if config.image_size not in (None, size):
        raise ValueError(f"config.image_size={config.image_size} but the cache holds {size}px "
                         f"images; build the cache with helpers.data.cache.prepare(..., image_size="
                         f"{config.image_size}) or leave image_size=None")
    cached_dataset = cache.meta.get("dataset", config.dataset)
    if cached_dataset != config.dataset:
        raise ValueError(f"config.dataset={config.dataset!r} but the cache is of {cached_dataset!r}")
    train, val = cache.part("train"), cache.part("val")
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise ValueError(f"{cache.path}: needs train and val images (has {len(train[0])} "
                         f"and {len(val[0])}); rebuild it with helpers.data.cache.prepare(..., force=True)")
    return train, val


@dataclass
class _Run:
    """One training run's fixed parts: the data on the device, the learner, where files go."""

    config: TrainConfig
    batches: TrainingBatches
    x_val: torch.Tensor  # (N, 3, H, W) uint8 on the device
    y_val: torch.Tensor  # (N,) float32 0/1
    learner: Learner
    detector: Detector  # what is saved for the best epoch (rank 0)
    out: Path
    fingerprint: str
    rank: int = 0
    world: int = 1
    announce: bool = True

    @property
    def ckpt_path(self) -> Path:
        return self.out / f"{run_name(self.config.model, self.config.degrade)}.pt"

    @property
    def last_path(self) -> Path:
        return self.out / f"{run_name(self.config.model, self.config.degrade)}.last.pt"


def _start(cache, config: TrainConfig, out_dir: str | Path | None, progress: bool) -> _Run:
    """Check the cache, set the device and seeds, move the data there once, build the model."""
    # never a detector of one class; checked before any torch setting changes
    check_counts(split_counts(cache.labels, cache.split), str(cache.path), ("train", "val"))
    (train_images, train_labels), (val_images, val_labels) = _checked_splits(cache, config)
    rank, world = _dist()
    announce = rank == 0 and progress
    device = _device(config, rank, world)
    size = int(cache.images.shape[1])
    # pretrained weights expect their own normalisation; models from scratch get the data's
    mean, std = input_normalisation(config.model) or channel_stats(train_images)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    # the data lives on the device as uint8 for the whole run
    batches = TrainingBatches(images_to_device(train_images, device),
                              torch.from_numpy(train_labels.astype(np.float32)).to(device),
                              mean_t, std_t, config, rank, world)
    x_val = images_to_device(val_images, device)
    y_val = torch.from_numpy(val_labels.astype(np.float32)).to(device)
    config, probe = _resolve_cpu_amp(replace(config, image_size=size), size, device,
                                     batches.batch_size, announce)
    learner = make_learner(config, size, device, world)
    if _is_probe(learner.net):  # frozen features: one pass, then logistic regression
        config = replace(config, epochs=1)
    batches.config = config
    detector = Detector(learner.net, config.model, config.dataset, size, mean, std, asdict(config), {},
                        cache.fingerprint, config.model_options,
                        environment={**environment_fingerprint(), "cpu_precision_probe": probe})
    out = Path(out_dir) if out_dir else paths.results_dir(config.dataset, "models")
    return _Run(config, batches, x_val, y_val, learner, detector, out, cache.fingerprint, rank, world,
                announce)


def _epoch(run: _Run, epoch: int) -> dict:
    """Train one epoch and validate: the history's row."""
    config, learner = run.config, run.learner
    learner.runner.train()
    started = time.perf_counter()
    sums = train_epoch(learner, run.batches, epoch, config,
                       show_bar=run.announce and run.batches.steps >= 20)
    train_seconds = time.perf_counter() - started
    if run.world > 1:
        reduced = torch.tensor([sums["loss"], sums["correct"], sums["seen"]], dtype=torch.float64,
                               device=run.x_val.device)
        dist.all_reduce(reduced)
        sums["loss"], sums["correct"], sums["seen"] = reduced.tolist()
        for buffer in learner.net.buffers():  # one set of batch-norm statistics everywhere
            dist.broadcast(buffer, 0)
    metrics = validate(learner.net, run.x_val, run.y_val, run.batches.mean, run.batches.std, config)
    return {"epoch": epoch + 1, "lr": sums["lr"], "train_loss": sums["loss"] / sums["seen"],
            "train_acc": sums["correct"] / sums["seen"], **metrics,
            "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
            "images": sums["seen"], "images_per_s": sums["seen"] / max(train_seconds, 1e-9)}


def _is_probe(net: nn.Module) -> bool:
    return bool(getattr(net, "frozen", False))


def _probe_epoch(run: _Run) -> dict:
    """A linear probe's only epoch: frozen features of train and val once, then logistic
    regression (:mod:`helpers.training.probe`); the history's row."""
    config, net, b = run.config, run.learner.net, run.batches
    started = time.perf_counter()
    f_train = pooled_features(net, b.images, b.mean, b.std, config.eval_batch_size, bool(config.cpu_amp))
    f_val = pooled_features(net, run.x_val, b.mean, b.std, config.eval_batch_size, bool(config.cpu_amp))
    feature_seconds = time.perf_counter() - started
    fits = fit_linear_head(net.head, (f_train, b.labels.cpu().numpy()), (f_val, run.y_val.cpu().numpy()),
                           config.seed)
    train_seconds = time.perf_counter() - started
    metrics = validate(net, run.x_val, run.y_val, b.mean, b.std, config)  # through the model itself
    chosen = next(f for f in fits if f["chosen"])
    return {"epoch": 1, "lr": float("nan"), "train_loss": float("nan"), "train_acc": float("nan"),
            **metrics, "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
            "images": float(len(f_train)), "images_per_s": len(f_train) / max(feature_seconds, 1e-9),
            "probe_C": chosen["C"], "feature_seconds": feature_seconds}


def _keep(run: _Run, done: Progress, row: dict) -> None:
    """Record an epoch: the best weights (saved as the detector), the history, the resume point."""
    metrics = {"val_loss": row["val_loss"], "val_acc": row["val_acc"]}
    done.rows.append(row)
    done.epoch = row["epoch"]
    if not _finite_outputs(run, row):  # never saved as the detector
        done.bad_epochs += 1
    elif done.best is None or validation_rank(metrics) > validation_rank(done.best):
        done.best, done.bad_epochs = {**metrics, "epoch": row["epoch"]}, 0
        done.best_state = cpu_state(run.learner.net)
        if run.rank == 0:
            run.detector.metrics, run.detector.epoch = done.best, row["epoch"]
            run.detector.seconds_to_epoch = sum(r["seconds"] for r in done.rows)
            run.detector.save(run.ckpt_path)
    else:
        done.bad_epochs += 1
    if run.rank == 0:
        with atomic_path(run.out / f"{run_name(run.config.model, run.config.degrade)}_history.csv") as tmp:
            pd.DataFrame(done.rows).to_csv(tmp, index=False)
        save_resume_point(run.last_path, asdict(run.config), run.fingerprint, run.learner, done)


def fit(cache, config: TrainConfig, out_dir: str | Path | None = None, progress: bool = True,
        resume: bool = True, on_epoch: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``config.model`` on the train split of ``cache``; select on its val split.

    A frozen model (``lite0_probe``) is fitted in one pass instead: its features once, then
    logistic regression (:mod:`helpers.training.probe`).

    Writes ``<model>.pt`` (a :class:`Detector`: the best epoch so far, atomically),
    ``<model>_history.csv`` and, while training, ``<model>.last.pt`` (resume point, removed at
    the end) to ``out_dir`` (default ``results/<dataset>/models/``). With ``resume`` a matching
    ``.last.pt`` (same configuration and data) is continued. With ``config.degrade`` set,
    ``<model>`` is ``<model>-<recipe>`` (:func:`helpers.training.degrade.run_name`). ``on_epoch(epoch, row)`` runs
    after each epoch's files are written. Under ``torch.distributed`` only rank 0 writes.
    Raises DatasetError for a cache with a class missing from a split, ValueError when the
    cache does not suit ``config``.
    """
    run = _start(cache, config, out_dir, progress)
    config = run.config
    done = (resume_progress(run.last_path, run.ckpt_path, asdict(config), run.fingerprint, run.learner,
                    run.announce) if resume else Progress())
    start_epoch = done.epoch
    bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.model} on {config.dataset}",
               unit="epoch", disable=not run.announce, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        if done.stopped(config.patience):
            break
        row = _probe_epoch(run) if _is_probe(run.learner.net) else _epoch(run, epoch)
        _keep(run, done, row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.4f}",
                        img_s=f"{row['images_per_s']:.0f}")
        if on_epoch:
            on_epoch(epoch + 1, row)
    bar.close()
    _refuse_without_a_finite_epoch(run, done)
    if run.world > 1:
        dist.barrier()  # every process is done with last.pt before it goes
    history = pd.DataFrame(done.rows)
    run.learner.net.load_state_dict(done.best_state)
    run.learner.net.eval()
    if run.rank == 0:
        _finish(run, history, cache)
        run.last_path.unlink(missing_ok=True)
    return TrainResult(
        model=run.learner.net, history=history, metrics=done.best, checkpoint=run.ckpt_path,
        seconds=float(history["seconds"].sum()),
        images_per_s=float(history["images"].sum() / history["train_seconds"].sum()),
        config=config, resumed_epochs=start_epoch)


def _finish(run: _Run, history: pd.DataFrame, cache) -> None:
    """Add what is known only at the end of the run to the best checkpoint: the whole run's
    time and epochs, the decision threshold chosen on validation
    (:func:`helpers.core.scoring.choose_threshold`, one pass per image), the domain check
    fitted on the training images (:func:`helpers.training.domain.add_domain_check`) and the
    worst case under notebook 05's protocol on validation, which chooses the detector
    ``predict`` uses (:func:`helpers.core.postprocess.validation_robustness`; the same images
    for every detector of a cache, whatever its training seed)."""
    if not run.ckpt_path.is_file():
        return
    logits = _logits(run.learner.net, run.x_val, run.batches.mean, run.batches.std, run.config)
    p_fake = torch.sigmoid(logits).double().cpu().numpy()
    if not np.isfinite(p_fake).all():  # the best epoch's weights, restored, must still be finite
        raise NonFiniteModelError(f"{run.ckpt_path}: the restored best model gives non-finite "
                                  "validation outputs; its threshold was not chosen")
    detector = Detector.load(run.ckpt_path)
    detector.threshold, detector.threshold_val_acc = choose_threshold(run.y_val.cpu().numpy(), p_fake)
    detector.threshold_chosen = True
    detector.run_seconds, detector.epochs_run = float(history["seconds"].sum()), len(history)
    try:
        add_domain_check(detector, cache, seed=run.config.seed)
    except ImportError as err:  # the pretrained wheels missing: the pixel statistics alone
        warnings.warn(f"domain check on pixel statistics only ({err})", stacklevel=2)
        add_domain_check(detector, cache, "stats", seed=run.config.seed)
    images, labels = cache.part("val")
    detector.robustness = validation_robustness(detector, images, labels, device=run.x_val.device)
    detector.save(run.ckpt_path)


# --------------------------------------------------------------- no detector from a broken model
class NonFiniteModelError(RuntimeError):
    """Training produced no model whose validation outputs are all finite (e.g. a float16 run
    that overflowed): nothing is saved as a detector."""


def _finite_outputs(run: _Run, row: dict) -> bool:
    """Whether an epoch's validation logits were all finite; says so when not."""
    bad = int(row.get("val_nonfinite", 0))
    if bad and run.announce:
        print(f"epoch {row['epoch']}: {bad} of {len(run.y_val)} validation outputs are NaN or "
              "infinite; this epoch is not saved as the detector")
    return bad == 0


def _refuse_without_a_finite_epoch(run: _Run, done: Progress) -> None:
    """Raise :class:`NonFiniteModelError` when no epoch had finite validation outputs; the
    resume point of such a run goes too (resuming it would only continue the overflow)."""
    if done.best is not None:
        return
    if run.rank == 0:
        run.last_path.unlink(missing_ok=True)
    raise NonFiniteModelError(
        f"{_run_name(run)}: every epoch's validation outputs were NaN or infinite, so no "
        f"detector was saved ({run.ckpt_path} not written). A float16/bfloat16 run that "
        "overflowed leaves such a model: train again in float32 (amp=False, cpu_amp=False) or "
        "with a lower learning rate.")


def _run_name(run: _Run) -> str:
    return f"{run.config.model} on {run.config.dataset}"
