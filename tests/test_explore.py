"""Near-duplicates across splits: what the pixel-identical check cannot see."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from helpers.data.cache import prepare
from helpers.data.datasets import SPLITS
from helpers.explore.figures import balance_figure, near_duplicate_figure, sample_grid, spectrum_figure
from helpers.explore.stats import (
    channel_statistics,
    colour_only_accuracy,
    format_table,
    jpeg_table,
    near_duplicates,
    shortcut_verdict,
    thumbnails,
)


def smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A random picture with structure at every scale a thumbnail keeps."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BILINEAR))


def jpeg_copy(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def tiny_cache(images: list[np.ndarray], splits: list[str], labels: list[int]):
    split = np.array([SPLITS.index(s) for s in splits])
    return SimpleNamespace(images=np.stack(images), labels=np.array(labels),
                           files=np.array([f"img{i}.png" for i in range(len(images))]),
                           indices=lambda name: np.flatnonzero(split == SPLITS.index(name)))


def test_thumbnails_ignore_brightness_and_have_unit_length():
    image = smooth_image(np.random.default_rng(0)).astype(np.int16)
    darker = (image - 30).clip(0, 255).astype(np.uint8)
    both = thumbnails(np.stack([image.astype(np.uint8), darker]), side=8, chunk=1)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, rtol=1e-5)
    assert both[0] @ both[1] > 0.99


def test_recompressed_and_shifted_copies_of_training_images_are_found():
    rng = np.random.default_rng(1)
    train = [smooth_image(rng) for _ in range(20)]
    recompressed = jpeg_copy(train[3], quality=40)
    shifted = np.roll(train[7], 1, axis=1)
    unrelated = smooth_image(rng)
    cache = tiny_cache(train + [recompressed, shifted, unrelated],
                       ["train"] * 20 + ["val", "test", "test"], [0] * 20 + [0, 1, 1])
    table = near_duplicates(cache, threshold=0.95, side=8)
    found = dict(zip(table["index"], table["train_index"]))
    assert found == {20: 3, 21: 7}  # the unrelated image is not listed
    assert table.loc[table["index"] == 21, "train_label"].item() == "REAL"  # a label clash shows
    assert table["similarity"].is_monotonic_decreasing
    assert near_duplicate_figure(cache, table) is not None
    assert near_duplicate_figure(cache, table.iloc[:0]) is None


def test_notebook_02s_helpers_run_on_datasets_with_few_images_per_class(project_dirs, tmp_path):
    """Fewer than 12 images per class (the sample grid's default): every helper notebook 02
    calls, on a CIFAKE-layout and a shoes-layout cache built from tiny folders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from threadpoolctl import threadpool_limits

    from tests.conftest import write_dataset

    for dataset, n, layout in (("demo", 4, "cifake"), ("sneakers", 3, "shoes")):
        cache = prepare(dataset, write_dataset(tmp_path / dataset, n, layout=layout),
                             progress=False)
        train_counts = cache.meta["counts"]["train"]
        grid = sample_grid(cache, per_class=12, seed=0)
        shown = [ax for ax in grid.axes if ax.images]
        assert len(shown) == sum(train_counts.values())  # every training image, no more
        assert len(grid.axes) == 2 * max(train_counts.values())
        for figure in (balance_figure(cache), spectrum_figure(cache)):
            assert figure.axes
        assert channel_statistics(cache).notna().all().all()
        with threadpool_limits(limits=1):  # OpenMP threads on a few images: all overhead
            assert 0 <= colour_only_accuracy(cache, "val", 0).estimate <= 1
        assert len(format_table(cache)) >= 2 and shortcut_verdict(cache)
        jpeg_table(cache)
        near = near_duplicates(cache, threshold=0.95)
        near_duplicate_figure(cache, near)
        plt.close("all")
