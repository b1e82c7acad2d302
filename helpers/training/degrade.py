"""Training-time degradations: what a shared image goes through (blur, rescaling, cropping,
JPEG re-encoding), applied at random to training batches so a detector learns traces that
survive them (``TrainConfig.degrade`` names a recipe of :data:`RECIPES`).

The reference recipe is CNNDetection's (Wang et al., "CNN-generated images are surprisingly
easy to spot... for now", CVPR 2020): with probability p a Gaussian blur with sigma ~ U[0, 3],
with probability p a JPEG re-encode at quality ~ U{30..100}; their two released models use
p = 0.5 and p = 0.1. Rescaling and crop-and-resize are added because they break this
project's detectors most (notebook 05's robustness protocol, issue #34).

Definitions shared with notebook 05's perturbations (:mod:`helpers.evaluation.robustness`,
Pillow on numpy; the implementations differ, the definitions do not): blur sigma in pixels;
rescale by a factor then back to the original side; crop a fraction of each side and resize
it back to the original side; JPEG at a quality with 4:2:0 chroma (libjpeg's default here,
Pillow's there). Every function takes and returns (B, 3, H, W) uint8 on any device, and is
the identity (the same bytes) for images at zero severity (sigma 0, factor 1, fraction 1,
quality None/0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Resampling filters a rescale draws from (CNNDetection draws the codec; here the filter).
FILTERS = ("nearest", "bilinear", "bicubic")


def _check(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur image i with a Gaussian of standard deviation ``sigmas[i]`` pixels (B,) float.

    Separable kernels truncated at 3 sigma (of the batch's largest), reflected borders, one
    grouped convolution per direction for the whole batch. sigma 0: the image unchanged.
    """
    _check(images)
    sigmas = sigmas.to(images.device, torch.float32)
    chosen = (sigmas > 0).nonzero().flatten()
    if len(chosen) == 0:
        return images
    sigmas, picked = sigmas[chosen], images[chosen]  # only the blurred images are computed
    b, c, h, w = picked.shape
    radius = min(max(1, math.ceil(3 * float(sigmas.max()))), h - 1, w - 1)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*3, K)
    x = picked.float().reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    out = images.clone()
    out[chosen] = _to_uint8(x.reshape(b, c, h, w))
    return out


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(1, 3, h, w) float -> (1, 3, *size); antialiased when shrinking (as Pillow does)."""
    smaller = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    if mode == "nearest":
        return F.interpolate(image, size=size, mode="nearest")
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=smaller)


def rescale(images: torch.Tensor, factors: torch.Tensor, filters: torch.Tensor | None = None) -> torch.Tensor:
    """Resize image i by ``factors[i]`` (B,) and back to its side, both with the filter
    ``FILTERS[filters[i]]`` (default bicubic, as notebook 05); factor 1: unchanged."""
    _check(images)
    out = images.clone()
    h, w = images.shape[-2:]
    for i, factor in enumerate(factors.tolist()):
        if factor == 1:
            continue
        mode = FILTERS[int(filters[i])] if filters is not None else "bicubic"
        small = (max(1, round(h * factor)), max(1, round(w * factor)))
        x = _resize(_resize(images[i:i + 1].float(), small, mode), (h, w), mode)
        out[i] = _to_uint8(x[0])
    return out


def crop_resize(images: torch.Tensor, fractions: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
    """Cut a square of ``fractions[i]`` of each side (B,) from image i, its top-left corner at
    ``positions[i]`` (B, 2) fractions of the free room (default 0.5: centred, as notebook 05),
    and resize it back (bicubic, antialiased). Fraction 1: unchanged."""
    _check(images)
    out = images.clone()
    h, w = images.shape[-2:]
    for i, fraction in enumerate(fractions.tolist()):
        if fraction >= 1:
            continue
        ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
        fy, fx = positions[i].tolist() if positions is not None else (0.5, 0.5)
        top, left = int((h - ch) * fy), int((w - cw) * fx)
        crop = images[i:i + 1, :, top:top + ch, left:left + cw].float()
        out[i] = _to_uint8(_resize(crop, (h, w), "bicubic")[0])
    return out


def jpeg(images: torch.Tensor, qualities: torch.Tensor) -> torch.Tensor:
    """Re-encode image i as JPEG at ``qualities[i]`` (B,) int, 1-100, and decode it
    (torchvision.io, libjpeg, 4:2:0 chroma); quality 0: unchanged. The codec runs on the
    CPU: images on an accelerator go there and back."""
    _check(images)
    out = images.clone()
    chosen = [i for i, q in enumerate(qualities.tolist()) if q > 0]
    if not chosen:
        return out
    cpu = images[chosen].cpu()
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, not a dependency here
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg  # here: only runs that use it pay

        for j, i in enumerate(chosen):
            data = encode_jpeg(cpu[j].contiguous(), quality=int(qualities[i]))
            out[i] = decode_jpeg(data).to(images.device)
    return out


@dataclass(frozen=True)
class Step:
    """One degradation of a recipe, applied to each image with probability ``p``.

    kind: blur (sigma ~ U[low, high]), rescale (factor log-uniform in [low, high], a random
    filter of :data:`FILTERS`), crop (fraction ~ U[low, high] at a random position), jpeg
    (quality ~ U{low..high}), rescale_jpeg (the chain: rescale as above, then JPEG at
    quality ~ U{30..100}, as an upload to a website does).
    """

    kind: str
    p: float
    low: float
    high: float

    def apply(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = len(images)
        # every draw is made whether or not the image is chosen: the stream stays the same
        chosen = torch.rand(b, generator=gen) < self.p
        u = torch.rand(b, generator=gen)
        if self.kind == "blur":
            return gaussian_blur(images, torch.where(chosen, self.low + u * (self.high - self.low), 0.0))
        if self.kind == "jpeg":
            q = torch.randint(int(self.low), int(self.high) + 1, (b,), generator=gen)
            return jpeg(images, torch.where(chosen, q, 0))
        if self.kind in ("rescale", "rescale_jpeg"):
            filters = torch.randint(len(FILTERS), (b,), generator=gen)
            q = torch.randint(30, 101, (b,), generator=gen)
            log_f = math.log(self.low) + u * (math.log(self.high) - math.log(self.low))
            out = rescale(images, torch.where(chosen, log_f.exp(), 1.0), filters)
            return jpeg(out, torch.where(chosen, q, 0)) if self.kind == "rescale_jpeg" else out
        if self.kind == "crop":
            positions = torch.rand(b, 2, generator=gen)
            return crop_resize(images, torch.where(chosen, self.low + u * (self.high - self.low), 1.0),
                               positions)
        raise ValueError(f"unknown degradation kind {self.kind!r}")


#: The recipes ``TrainConfig.degrade`` names; each step in order (JPEG last, as on the way to a user).
RECIPES: dict[str, tuple[Step, ...]] = {
    "none": (),
    # CNNDetection's two released models (Wang et al. 2020): Blur+JPEG (0.5) and (0.1)
    "cnndet": (Step("blur", 0.5, 0.0, 3.0), Step("jpeg", 0.5, 30, 100)),
    "cnndet_p01": (Step("blur", 0.1, 0.0, 3.0), Step("jpeg", 0.1, 30, 100)),
    # issue #34's probe: the three that break this project's detectors most
    "blur_rescale_crop": (Step("crop", 0.3, 0.5, 1.0), Step("rescale", 0.3, 0.25, 2.0),
                          Step("blur", 0.5, 0.0, 3.0)),
    # the same at half the probabilities: about half of the images stay clean (a 40-epoch CIFAKE
    # run of the full one cost 1.3 pp of clean validation accuracy; docs/robustness-study.md)
    "blur_rescale_crop_light": (Step("crop", 0.15, 0.5, 1.0), Step("rescale", 0.15, 0.25, 2.0),
                                Step("blur", 0.25, 0.0, 3.0)),
    # all of them, JPEG last (a rescale followed by a JPEG is the upload chain)
    "all": (Step("crop", 0.3, 0.5, 1.0), Step("rescale", 0.3, 0.25, 2.0), Step("blur", 0.3, 0.0, 3.0),
            Step("jpeg", 0.3, 30, 100)),
    # an upload: crop sometimes, then resize-then-JPEG as one chain, plus CNNDetection's blur
    "upload": (Step("crop", 0.3, 0.5, 1.0), Step("blur", 0.3, 0.0, 3.0),
               Step("rescale_jpeg", 0.5, 0.25, 2.0)),
}


def recipe(name: str) -> tuple[Step, ...]:
    """The steps of recipe ``name``; ValueError naming the known recipes otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown degradation recipe {name!r}; known: {', '.join(RECIPES)} "
                         f"(helpers/training/degrade.py)")
    return RECIPES[name]


def run_name(model: str, name: str = "none") -> str:
    """File stem of a run's checkpoint: the model's name, with ``-<recipe>`` when it trained
    with degradations, so the clean and the robust detector of a model sit side by side."""
    return model if name in ("none", "", None) else f"{model}-{name}"


def degrade_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch's degradation draws: from (seed, epoch, rank), separate from the
    epoch plan's stream so turning degradations on changes no other random choice."""
    return int(np.random.SeedSequence([seed, epoch, rank, 34]).generate_state(1)[0])


def degrade(images: torch.Tensor, name: str, gen: torch.Generator) -> torch.Tensor:
    """Apply recipe ``name`` to a batch (B, 3, H, W) uint8, drawing from the CPU generator
    ``gen``; real and fake images alike (labels are not looked at). Returns the same shape and dtype."""
    for step in recipe(name):
        images = step.apply(images, gen)
    return images
