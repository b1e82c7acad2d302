"""Notebook 04's figures: losses, quality against time, sample grids.
"""

from __future__ import annotations

import numpy as np

from .monitor import image_grid
from .train import GAN


def quality_figure(history: list[dict], floor: dict | None = None):
    """FID and KID against training minutes where they were measured, beside the floor (the
    same metric on two disjoint sets of real images of the same size), with the sample count."""
    import matplotlib.pyplot as plt

    scored = [h for h in history if "fid" in h]
    minutes = [h["train_seconds"] / 60 for h in scored]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(minutes, [h["fid"] for h in scored], "o-", label="generated")
    axes[0].set(xlabel="training minutes", ylabel="FID (lower is better)")
    axes[1].errorbar(minutes, [1000 * h["kid"] for h in scored], yerr=[1000 * h["kid_std"] for h in scored],
                     fmt="o-", capsize=3, label="generated")
    axes[1].set(xlabel="training minutes", ylabel="KID x 1000 (lower is better)")
    if floor is not None:
        axes[0].axhline(floor["fid"], color="grey", ls=":", label="real vs real (floor)")
        axes[1].axhline(1000 * floor["kid"], color="grey", ls=":", label="real vs real (floor)")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if scored:
        fig.suptitle(f"{scored[-1]['n_fake']} generated vs {scored[-1]['n_real']} real images", fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(gan: GAN):
    """Generator and discriminator losses, and D(x) vs D(G(z)), for every step of ``gan``."""
    import matplotlib.pyplot as plt

    log = {k: np.asarray(v) for k, v in gan.step_log.items()}
    x = np.arange(1, len(log["loss_d"]) + 1) / max(len(log["loss_d"]), 1) * gan.epoch  # in epochs
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(x, log["loss_d"], label="discriminator", lw=1)
    axes[0].plot(x, log["loss_g"], label="generator", lw=1)
    axes[0].set(xlabel="epoch", ylabel=f"{gan.config.loss} loss", title="Losses (every step)")
    axes[1].plot(x, log["d_x"], label="D(x): real", lw=1)
    axes[1].plot(x, log["d_g_z"], label="D(G(z)): generated", lw=1)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="epoch", ylabel="mean sigmoid(D): 'real'", ylim=(0, 1),
                title="Discriminator outputs (every step)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def samples_figure(generated: np.ndarray, real: np.ndarray, recipe: str = "GAN", columns: int = 8):
    """Generated images beside real training images, at the same size."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    for ax, images, title in ((axes[0], generated, f"{recipe} ({len(generated)} samples, fixed noise)"),
                              (axes[1], real, f"real training images ({len(real)})")):
        ax.imshow(image_grid(images, columns), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig
