"""The GAN's networks: DCGAN's generator and discriminator (Radford, Metz & Chintala, ICLR 2016)
and FastGAN's lightweight generator (Liu et al., ICLR 2021, as Projected GAN uses it), built
from a :class:`~helpers.gan.config.GANConfig` (its recipes add data-efficient training to them:
DiffAugment, spectral norm with the hinge loss, an EMA generator, a projected discriminator).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .config import GANConfig
from .projected import ProjectedDiscriminator


def _n_stages(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"the generators support 32 or 64 pixels, not {resolution}")
    return int(math.log2(resolution)) - 2  # 4x4 -> resolution


class Generator(nn.Module):
    """z (N, nz) -> image (N, 3, R, R) in [-1, 1]: transposed convs doubling the size."""

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 32):
        super().__init__()
        stages = _n_stages(resolution)
        width = ngf * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class _SkipExcitation(nn.Module):
    """FastGAN's skip-layer excitation: a 4x4 map gates the channels of a large one.

    ``small`` (N, C_s, h, w) is pooled to 4x4 and mapped to one sigmoid gate per channel of
    ``big`` (N, C_b, H, W); the output is ``big`` times the gates (Liu et al. 2021, Fig. 3).
    """

    def __init__(self, small_channels: int, big_channels: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), _sn(nn.Conv2d(small_channels, big_channels, 4, 1, 0, bias=False)),
            nn.SiLU(), _sn(nn.Conv2d(big_channels, big_channels, 1, 1, 0, bias=False)), nn.Sigmoid())

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return big * self.gate(small)


def _up_block(cin: int, cout: int) -> nn.Sequential:
    """FastGAN-lite's up-sampling block: nearest 2x, 3x3 conv to 2*cout, batch norm, GLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         _sn(nn.Conv2d(cin, cout * 2, 3, 1, 1, bias=False)), nn.BatchNorm2d(cout * 2),
                         nn.GLU(dim=1))


class FastGenerator(nn.Module):
    """z (N, nz) -> image (N, 3, R, R) in [-1, 1]: FastGAN's lite generator (R = 32 or 64).

    Liu, Zhu, Song & Elgammal, "Towards Faster and Stabilized GAN Training for High-fidelity
    Few-shot Image Synthesis", ICLR 2021, in the "lite" form that Projected GAN pairs with its
    discriminator (Sauer et al. 2021, ``networks_fastgan.py``): the latent normalised to unit
    second moment, a 4x4 transposed convolution, up-sampling blocks with GLU gates and spectral
    norm, and a skip-layer excitation from the 4x4 map to the last one. Widths: 4·ngf channels at
    4x4, halving each doubling down to ngf/2 (ngf = 64 gives the paper's ngf = 16 widths).
    """

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 64):
        super().__init__()
        stages = _n_stages(resolution)
        widths = [max(4 * ngf >> i, ngf // 2) for i in range(stages + 1)]  # 4x4, 8x8, ..., R
        self.init = nn.Sequential(_sn(nn.ConvTranspose2d(nz, widths[0] * 2, 4, 1, 0, bias=False)),
                                  nn.BatchNorm2d(widths[0] * 2), nn.GLU(dim=1))
        self.ups = nn.ModuleList(_up_block(widths[i], widths[i + 1]) for i in range(stages))
        self.excite = _SkipExcitation(widths[0], widths[-1])
        self.to_rgb = _sn(nn.Conv2d(widths[-1], 3, 3, 1, 1))
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # onto the sphere, as PGGAN
        x = first = self.init(z.view(z.shape[0], -1, 1, 1))
        for up in self.ups:
            x = up(x)
        return torch.tanh(self.to_rgb(self.excite(first, x)))


def build_generator(config: GANConfig) -> nn.Module:
    """The generator ``config`` names: DCGAN's or FastGAN's lite one."""
    cls = FastGenerator if config.generator == "fastgan" else Generator
    return cls(config.nz, config.ngf, config.resolution)


class Discriminator(nn.Module):
    """image (N, 3, R, R) -> one logit per image (real > 0): strided convs halving the size."""

    def __init__(self, ndf: int = 64, resolution: int = 32, spectral_norm: bool = False):
        super().__init__()
        stages = _n_stages(resolution)
        norm = _sn if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [norm(nn.Conv2d(3, ndf, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(stages - 1):
            layers.append(norm(nn.Conv2d(width, width * 2, 4, 2, 1, bias=False)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        layers.append(norm(nn.Conv2d(width, 1, 4, 1, 0, bias=False)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def build_discriminator(config: GANConfig) -> nn.Module:
    """The discriminator ``config`` names: DCGAN's or the projected one on Lite0 features."""
    if config.discriminator == "projected":
        return ProjectedDiscriminator(config.feature_size)  # Lite0 loads only here
    return Discriminator(config.ndf, config.resolution, config.spectral_norm)


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
