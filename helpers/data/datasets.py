"""The datasets the project knows: their names, layouts, classes and published results.

Label 0 is a real photo, label 1 an AI-generated image (:data:`CLASS_NAMES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

CLASS_NAMES = ("REAL", "FAKE")  # label 0 = real photo, label 1 = AI-generated


SPLITS = ("train", "val", "test")


DROPPED = -1  # split code of images removed from evaluation (leakage)


class DataUnavailableError(RuntimeError):
    """The data cannot be obtained here; the message says what to do instead."""


class DatasetError(DataUnavailableError):
    """The source is not the dataset it claims to be (one class, an empty split, ...); the
    message names what was found and what is accepted. Raised before anything is saved."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the project knows about one dataset."""

    name: str
    title: str
    native_size: int  # side of the images as published
    image_size: int  # default side of the cached images
    kaggle_handle: str | None = None
    kaggle_version: int | None = None
    official_split: bool = False  # True: the layout has train/ and test/ folders
    is_demo: bool = False
    # re-encode every image at this JPEG quality before resizing (images.decode, rule 3):
    # set where the classes were published with different quantisation tables
    harmonise_jpeg: int | None = None
    # image files in the published version; a Kaggle download with fewer than
    # MIN_DOWNLOADED_SHARE of them is refused (a local copy may be a subset)
    expected_files: int | None = None
    citation: str = ""
    # image categories encoded in the file names (CIFAKE: the CIFAR-10 class), see category_of
    categories: tuple[str, ...] = ()
    # published test accuracies to compare with: (who, accuracy in 0..1)
    published: tuple[tuple[str, float], ...] = ()
    # lower-case folder names that mark each class
    class_folders: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "REAL": ("real",),
        "FAKE": ("fake", "ai", "ai-generated", "ai-midjourney", "midjourney", "generated"),
    })

    @property
    def kaggle_ref(self) -> str:
        return f"{self.kaggle_handle}/versions/{self.kaggle_version}"


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifake", title="CIFAKE: real (CIFAR-10) vs Stable Diffusion 1.4 images",
            native_size=32, image_size=32, official_split=True,
            kaggle_handle="birdy654/cifake-real-and-ai-generated-synthetic-images",
            kaggle_version=3, expected_files=120_000,
            citation="Bird & Lotfi (2024), CIFAKE, IEEE Access 12:15642-15650",
            categories=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                        "ship", "truck"),
            published=(("CIFAKE paper CNN (Bird & Lotfi 2024)", 0.9298),
                       ("ResNet50, ImageNet-pretrained", 0.922),
                       ("EfficientNetB6", 0.941),
                       ("ResNet-18 from scratch", 0.95),
                       ("best from scratch seen", 0.9766),
                       ("ViT-S, ImageNet-pretrained (best published)", 0.9877)),
        ),
        DatasetSpec(
            name="sneakers", title="Shoes: real photos vs Midjourney images",
            native_size=240, image_size=240, harmonise_jpeg=90,
            kaggle_handle="sunnykakar/shoes-dataset-real-and-ai-generated-images",
            kaggle_version=1, expected_files=2_181,
            citation="Kakar (2024), Shoes Dataset: Real and AI-Generated Images (MIT licence)",
            published=(("reference CNN, test", 0.9634), ("reference CNN, validation", 0.9611)),
        ),
        DatasetSpec(
            name="demo", title="DEMO (offline, synthetic): scikit-image photo crops vs a small GAN",
            native_size=32, image_size=32, official_split=True, is_demo=True,
            citation="built by helpers.data.demo; not a benchmark",
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``, or a clear error listing the known datasets."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


_CATEGORY_SUFFIX = re.compile(r"\((\d+)\)$")


def category_of(name: str, spec: DatasetSpec) -> str | None:
    """The image category a file name encodes, or None where the dataset has none.

    CIFAKE names its files ``N (k).jpg``: image N of CIFAR-10 class k (1 = airplane ...
    10 = truck), and ``N.jpg`` for class 1 (the dataset's README). A suffix outside 1..10
    gives None rather than a wrong category.
    """
    if not spec.categories:
        return None
    match = _CATEGORY_SUFFIX.search(PurePosixPath(name).stem.strip())
    k = int(match.group(1)) if match else 1
    return spec.categories[k - 1] if 1 <= k <= len(spec.categories) else None
