"""DCGAN (Radford, Metz & Chintala, 2016) for 32x32 and 64x64 RGB images.

Used twice: notebook 04 trains it on a dataset's real images to make a second, unseen
generator for the detector; :mod:`helpers.demo` trains a small one to make the offline demo
set's fake images.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .accel import autocast, images_to_device


@dataclass
class GANConfig:
    """Hyper-parameters of a DCGAN run (the paper's defaults)."""

    resolution: int = 32  # 32 or 64
    nz: int = 100  # latent size
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    spectral_norm: bool = False  # spectral normalisation in D (replaces its batch norm)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 128
    epochs: int = 25
    seed: int = 0


def _n_stages(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"DCGAN supports 32 or 64 pixels, not {resolution}")
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


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN:
    """A generator, a discriminator and their optimisers, trained on uint8 images."""

    def __init__(self, config: GANConfig, device: torch.device):
        self.config, self.device = config, device
        torch.manual_seed(config.seed)
        self.G = Generator(config.nz, config.ngf, config.resolution).to(device)
        self.D = Discriminator(config.ndf, config.resolution, config.spectral_norm).to(device)
        self.G.apply(dcgan_init)
        self.D.apply(dcgan_init)
        if device.type == "cuda":
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        betas = (config.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)
        self.loss = nn.BCEWithLogitsLoss()
        self.epoch = 0

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.nz, generator=generator, device="cpu").to(self.device)

    def train_step(self, real: torch.Tensor) -> dict[str, float]:
        """One update of D (real vs fake) and one of G (non-saturating loss).

        ``real`` is a float batch in [-1, 1]. Returns the losses, D(x) and D(G(z)).
        """
        n = real.shape[0]
        ones = torch.ones(n, device=self.device)
        zeros = torch.zeros(n, device=self.device)
        z = torch.randn(n, self.config.nz, device=self.device)
        with autocast(self.device):
            fake = self.G(z)
            d_real = self.D(real)
            d_fake = self.D(fake.detach())
            loss_d = self.loss(d_real.float(), ones) + self.loss(d_fake.float(), zeros)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        with autocast(self.device):
            d_fake_for_g = self.D(fake)
            loss_g = self.loss(d_fake_for_g.float(), ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {
            "loss_d": loss_d.item(), "loss_g": loss_g.item(),
            "d_x": torch.sigmoid(d_real.float()).mean().item(),
            "d_g_z": torch.sigmoid(d_fake.float()).mean().item(),
        }

    def train_epoch(self, data: torch.Tensor, progress: bool = False) -> dict[str, float]:
        """One pass over ``data`` ((N, 3, R, R) uint8 on the device) in shuffled batches."""
        from tqdm.auto import tqdm

        self.G.train()
        self.D.train()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
            self.config.seed * 100_003 + self.epoch)).to(data.device)
        bs = self.config.batch_size
        steps = len(data) // bs  # drop the ragged last batch: batch norm dislikes tiny ones
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for step in tqdm(range(steps), desc=f"GAN epoch {self.epoch + 1}", disable=not progress,
                         leave=False):
            batch = data[order[step * bs:(step + 1) * bs]]
            if torch.rand(1).item() < 0.5:  # random horizontal flip of the whole batch
                batch = batch.flip(3)
            real = batch.float().div_(127.5).sub_(1.0)
            for key, value in self.train_step(real).items():
                sums[key] = sums.get(key, 0.0) + value
        self.epoch += 1
        seconds = time.perf_counter() - start
        stats = {k: v / max(steps, 1) for k, v in sums.items()}
        stats.update(epoch=self.epoch, seconds=seconds, iters_per_s=steps / max(seconds, 1e-9))
        return stats

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, batch_size: int = 500) -> np.ndarray:
        """``n`` images as (n, R, R, 3) uint8, deterministic in ``seed``."""
        self.G.eval()
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            z = self.noise(min(batch_size, n - start), gen)
            with autocast(self.device):
                img = self.G(z).float()
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                       .permute(0, 2, 3, 1).cpu().numpy())
        self.G.train()
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"config": asdict(self.config), "epoch": self.epoch,
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.epoch = state["epoch"]


def train_gan(images: np.ndarray, config: GANConfig, device: torch.device,
              on_epoch: Callable[[DCGAN, dict], None] | None = None,
              progress: bool = True, max_seconds: float | None = None) -> tuple[DCGAN, list[dict]]:
    """Train a DCGAN on (N, R, R, 3) uint8 ``images`` for ``config.epochs`` epochs.

    ``on_epoch(gan, stats)`` runs after every epoch (sample grids, checkpoints, metrics).
    ``max_seconds`` stops early at an epoch boundary once the time budget is spent.
    """
    if images.shape[1:3] != (config.resolution, config.resolution):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]}, config says "
                         f"{config.resolution}; resize them first (helpers.images.fit_square)")
    gan = DCGAN(config, device)
    data = images_to_device(images, device)
    history = []
    start = time.perf_counter()
    for _ in range(config.epochs):
        stats = gan.train_epoch(data, progress=progress)
        history.append(stats)
        if on_epoch:
            on_epoch(gan, stats)
        if max_seconds and time.perf_counter() - start > max_seconds:
            break
    return gan, history
