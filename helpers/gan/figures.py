"""Notebook 04's figures: losses, quality against time, sample grids.
"""

from __future__ import annotations

import numpy as np

from .train import DCGAN, image_grid


def quality_figure(history: list[dict]):
    """FID and KID over the epochs where they were measured (with the sample count)."""
    import matplotlib.pyplot as plt

    scored = [h for h in history if "fid" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = [h["epoch"] for h in scored]
    axes[0].plot(epochs, [h["fid"] for h in scored], "o-")
    axes[0].set(xlabel="epoch", ylabel="FID (lower is better)")
    axes[1].errorbar(epochs, [1000 * h["kid"] for h in scored], yerr=[1000 * h["kid_std"] for h in scored],
                     fmt="o-", capsize=3)
    axes[1].set(xlabel="epoch", ylabel="KID x 1000 (lower is better)")
    if scored:
        fig.suptitle(f"{scored[-1]['n_fake']} generated vs {scored[-1]['n_real']} real images", fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(gan: DCGAN):
    """Generator and discriminator losses, and D(x) vs D(G(z)), for every step of ``gan``."""
    import matplotlib.pyplot as plt

    log = {k: np.asarray(v) for k, v in gan.step_log.items()}
    x = np.arange(1, len(log["loss_d"]) + 1) / max(len(log["loss_d"]), 1) * gan.epoch  # in epochs
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(x, log["loss_d"], label="discriminator", lw=1)
    axes[0].plot(x, log["loss_g"], label="generator", lw=1)
    axes[0].set(xlabel="epoch", ylabel="BCE loss", title="Losses (every step)")
    axes[1].plot(x, log["d_x"], label="D(x): real", lw=1)
    axes[1].plot(x, log["d_g_z"], label="D(G(z)): generated", lw=1)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="epoch", ylabel="mean probability 'real'", ylim=(0, 1),
                title="Discriminator outputs (every step)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def samples_figure(generated: np.ndarray, real: np.ndarray, columns: int = 8):
    """Generated images beside real training images, at the same size."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    for ax, images, title in ((axes[0], generated, f"DCGAN ({len(generated)} samples, fixed noise)"),
                              (axes[1], real, f"real training images ({len(real)})")):
        ax.imshow(image_grid(images, columns), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig
