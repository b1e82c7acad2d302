"""The model under training and its steps: the learning-rate schedule, the optimiser, the
learner (the model, what a step calls, its optimiser and loss scaler) and one epoch of steps.
Split from :mod:`.loop`, which runs the epochs, validates and saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.accel import autocast, grad_scaler
from ..core.models import build_model
from .batches import TrainingBatches
from .config import TrainConfig


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of the ``total`` steps, then linear decay to zero."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on weights of rank >= 2 only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


@dataclass
class Learner:
    """The model and what its updates need."""

    net: nn.Module  # the model whose weights are trained and saved
    runner: nn.Module  # what a step calls: ``net``, or ``net`` wrapped by DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # float16 loss scaling (accel.grad_scaler); a no-op for bfloat16 and fp32


def make_learner(config: TrainConfig, size: int, device: torch.device, world: int) -> Learner:
    net = build_model(config.model, size, **config.build_options).to(device)
    net.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    runner: nn.Module = net
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        runner = torch.compile(runner)
    # float16 on CUDA below sm_80 needs loss scaling; bfloat16 and fp32 get a pass-through
    return Learner(net, runner, make_optimizer(net, config), grad_scaler(device, config.amp))


def train_epoch(learner: Learner, batches: TrainingBatches, epoch: int, config: TrainConfig,
                show_bar: bool) -> dict[str, float]:
    """One epoch of optimiser steps; the summed loss, correct verdicts (under augmentation and
    label smoothing) and images seen, and the last step's learning rate."""
    device = batches.images.device
    total_steps = batches.steps * config.epochs
    sum_loss = torch.zeros((), device=device)  # summed on the device: no sync per step
    sum_correct = torch.zeros((), device=device)
    lr = config.lr
    bar = tqdm(batches.epoch(epoch), total=batches.steps, desc=f"epoch {epoch + 1}", leave=False,
               mininterval=1.0, disable=not show_bar)
    for step, (x, y) in enumerate(bar):
        lr = lr_at(epoch * batches.steps + step, total_steps, config.lr, config.warmup)
        for group in learner.optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, config.amp, cpu=config.cpu_amp):
            logits = learner.runner(x).float().flatten()
        target = y * (1 - config.label_smoothing) + config.label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, target)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        sum_loss += loss.detach() * len(y)
        sum_correct += ((logits.detach() > 0).float() == y).sum()
    return {"loss": sum_loss.item(), "correct": sum_correct.item(),  # .item() waits for the device
            "seen": float(batches.steps * batches.batch_size), "lr": lr}
