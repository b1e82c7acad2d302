"""Device-side data handling shared by the detector's training loop and the GAN.

The airbench recipe: decode once, keep the uint8 images on the device, convert and augment
there, use channels_last and mixed precision on CUDA. On the CPU the same code runs in fp32.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor on ``device``, channels_last.

    Kept as uint8 (a quarter of fp32's memory): 100k 32x32 images are 307 MB.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA GPUs that support it, fp16 on older ones, none elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    """Mixed-precision context for ``device`` (a no-op on CPU and MPS)."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_float(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> normalised float batch, keeping the memory format."""
    return (batch.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(images: np.ndarray, max_images: int = 20_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of a uint8 (N, H, W, 3) array."""
    sample = images[:: max(1, len(images) // max_images)].astype(np.float32) / 255.0
    return sample.mean(axis=(0, 1, 2)).tolist(), sample.std(axis=(0, 1, 2)).tolist()
