"""The demo set's FAKE images: a small DCGAN generator whose weights ship with the project.

The generator (DCGAN, Radford et al. 2016, 32 px, width 32; :class:`helpers.gan.networks.Generator`)
was trained once on the demo's REAL training crops by :mod:`helpers.gan.demo_generator`
(``python -m helpers.gan.demo_generator`` retrains it and rewrites :data:`WEIGHTS`). Building the
demo set only samples it, so the build takes seconds instead of a minute of GAN training, and it
gives the same images on every machine: the noise comes from NumPy's PCG64 (the same stream on
every platform) and the generator runs in float64, where kernel differences between CPUs (AVX2
and AVX-512 sum in another order) stay ~1e-16 away from moving a pixel across a rounding step.
Before, each machine trained its own generator and the demo's fakes differed by CPU kind.

Imports only the networks, so the data step (notebook 01) does not depend on the GAN's training
code: a change to notebook 04's training rebuilds no dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .networks import Generator

#: The shipped generator: ``{"state_dict", "nz", "ngf", "resolution", "trained"}`` (float32 tensors).
WEIGHTS = Path(__file__).with_name("demo_generator.pt")


def load_generator(path: Path = WEIGHTS) -> tuple[Generator, dict]:
    """The shipped demo generator in float64 and eval mode, and its record (how it was trained).

    Raises FileNotFoundError (with the command that rebuilds it) when the weights are missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the demo generator's weights are missing; they ship with the "
                                "project (git checkout helpers/gan/demo_generator.pt) or are rebuilt "
                                "by `python -m helpers.gan.demo_generator`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    generator = Generator(nz=saved["nz"], ngf=saved["ngf"], resolution=saved["resolution"])
    generator.load_state_dict(saved["state_dict"])
    record = {k: v for k, v in saved.items() if k != "state_dict"}
    return generator.double().eval(), record


def sample(generator: Generator, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """``n`` images (n, R, R, 3) uint8 from ``generator`` (float64, eval mode), the noise drawn
    from ``numpy.random.default_rng(seed)``: the same bytes on every machine."""
    nz = generator.net[0].in_channels
    z = np.random.default_rng(seed).standard_normal((n, nz, 1, 1))
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            img = generator(torch.from_numpy(z[start:start + batch_size]))
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 32, 32, 3), np.uint8)


def demo_fakes(real: np.ndarray, n: int, seed: int, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The demo set's FAKE images (:data:`helpers.data.demo.MakeFakes`): ``n`` samples of the
    shipped generator (noise seed ``seed + 1``) at the side of ``real`` (N, S, S, 3) uint8, which
    must be the generator's (32 px). Returns them and the manifest's record of the generator.
    ``progress`` is accepted for the MakeFakes signature; sampling takes about a second."""
    generator, record = load_generator()
    if real.shape[1] != record["resolution"]:
        raise ValueError(f"the demo generator makes {record['resolution']}-px images, not {real.shape[1]}")
    return sample(generator, n, seed + 1), {"generator": "dcgan (shipped weights, sampled in float64)",
                                            **record}
