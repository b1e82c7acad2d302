"""Web app: upload images, see how likely each one is AI-generated, and why (Grad-CAM).

    make app                                    # DATASET=demo unless given
    python -m streamlit run helpers/tools/app.py --server.address localhost -- --dataset demo

Everything that decides an answer is shared with ``make predict``: the checkpoint is loaded by
:meth:`helpers.core.detector.Detector.load`, files are decoded by the project's one image rule
and classified by :func:`helpers.tools.predict.classify_images`; the overlay comes from
:func:`helpers.explain.cams.explain` (pytorch-grad-cam). The app adds only the page around them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

from helpers.core import images as image_rule
from helpers.core import paths
from helpers.core.accel import pick_device
from helpers.core.detector import Detector, best_path, detector_paths, is_checkpoint
from helpers.core.models import input_normalisation
from helpers.core.paths import printable
from helpers.core.selection import kind_note, robustness_key
from helpers.data.datasets import DATASETS
from helpers.explain import cams
from helpers.explain.figures import overlay
from helpers.tools import predict, verdicts

#: Largest file accepted, per file (Streamlit's uploader refuses bigger ones; so does the app).
#: Within it, every upload meets ``predict``'s rules: the same decoder and the same limits on
#: pixels, aspect ratio and JPEG scans (:mod:`helpers.core.image_cost`).
MAX_UPLOAD_MB = 25
#: Every suffix Pillow decodes, as ``predict`` takes in a folder (.jfif, .avif, .jp2, ...).
UPLOAD_TYPES = sorted(s.lstrip(".") for s in image_rule.IMAGE_SUFFIXES)
#: Side in pixels of the enlarged model-input and overlay images (shown at their column's width).
SHOW_PX = 224
LABEL_TEXT = {"FAKE": "AI-generated (FAKE)", "REAL": "real photo (REAL)"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options after ``--`` on the ``streamlit run`` command line (unknown ones are ignored)."""
    parser = argparse.ArgumentParser(prog="streamlit run helpers/tools/app.py --")
    parser.add_argument("--dataset", default="demo", help="dataset whose detector answers (default demo)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    return parser.parse_known_args(argv)[0]


def _stamp(dataset: str) -> tuple:
    """The ``.pt`` files of a dataset with their modification times (a cache key)."""
    return tuple((str(p), p.stat().st_mtime) for p in detector_paths(dataset))


@st.cache_data(show_spinner=False)
def detectors(dataset: str, stamp: tuple) -> tuple[list[str], str | None, str]:
    """Detector checkpoints of ``dataset`` (not the GAN's or other ``.pt`` files), the default
    one (the best measured worst case on validation: :func:`best_path`) and whether it is robust or the
    specialist; recomputed only when the files change (``stamp``)."""
    found = [path for path, _ in stamp if is_checkpoint(path)]
    best = str(best_path(dataset)) if found else None
    return found, best, (kind_note(Detector.load(best).config).split(":")[0] if best else "")


def datasets_with_detectors() -> list[str]:
    """Datasets under ``results/`` that hold at least one detector checkpoint."""
    if not paths.RESULTS.is_dir():
        return []
    names = sorted(d.name for d in paths.RESULTS.iterdir() if d.is_dir())
    return [name for name in names if detectors(name, _stamp(name))[0]]


def train_hint(dataset: str) -> str:
    """The ``make`` command that trains a detector for ``dataset``."""
    spec = DATASETS.get(dataset)
    if spec is not None and spec.is_demo:
        return "`make train` (the offline DEMO set, built on the spot)"
    if spec is not None and spec.kaggle_handle:
        return (f"`make train DATASET={dataset} DATA_SOURCE=/path/to/local/copy` (or `make train "
                f"DATASET={dataset}` to download it from Kaggle)")
    return f"`make train DATASET={dataset} DATA_SOURCE=/path/to/local/copy`"


@st.cache_resource(show_spinner="Loading the detector ...", max_entries=4)
def load_detector(path: str, mtime: float, device: str) -> Detector:
    """The detector at ``path`` (one load per file version, shared by every session)."""
    return Detector.load(path, device=pick_device(device))


def choose_detector(default_dataset: str) -> Path | None:
    """Sidebar: dataset (those with detectors, plus the one asked for) and checkpoint."""
    available = datasets_with_detectors()
    options = sorted(set(available) | {default_dataset})
    dataset = st.sidebar.selectbox("Dataset the detector was trained on", options,
                                   index=options.index(default_dataset), key="dataset")
    files, best, kind = detectors(dataset, _stamp(dataset))
    if not files:
        others = ", ".join(d for d in available if d != dataset)
        st.error(f"No trained detector for dataset **{dataset}** yet (none in "
                 f"`{paths.RESULTS / dataset / 'models'}`). Train one with {train_hint(dataset)}, "
                 "then reload this page." + (f" Datasets with a detector: {others}." if others else ""))
        return None
    labels = {f"default: {Path(best).stem} ({kind})": Path(best),
              **{checkpoint_label(Path(f).stem): Path(f) for f in files}}
    choice = st.sidebar.selectbox("Checkpoint", list(labels), key="checkpoint",
                                  help="'default' is the dataset's detector with the best worst-case "
                                       "accuracy on validation images resized, blurred, cropped or "
                                       "recompressed (notebook 05's protocol); the others, specialists "
                                       "included, stay selectable; 'generalist' ones start from "
                                       "ImageNet weights and may carry over better to other sources")
    return labels[choice]


def checkpoint_label(stem: str) -> str:
    """How the checkpoint menu names a file: ImageNet-pretrained models are marked generalists."""
    return f"{stem} (generalist: ImageNet-pretrained)" if input_normalisation(stem) else stem


GENERALIST = "generalist"  # helpers.training.generalist.NAME: trained on every generator the project has
TRAINED_ON = {GENERALIST: "every generator the project has: Stable Diffusion 1.4, Midjourney, its "
                          "FastGAN and the demo's DCGAN, with their photos (docs/generalist-study.md)"}
KIND_TEXT = {"lite0": "ImageNet-pretrained EfficientNet-Lite0, fine-tuned",
             "lite0_probe": "ImageNet-pretrained EfficientNet-Lite0, frozen, with a linear probe"}


def unseen_scores(detector: Detector) -> pd.DataFrame | None:
    """The detector's rows of the newest cross-dataset matrix (``results/*/cross_dataset.csv``,
    written by notebook 05) on sources it was not trained on; None when it was never scored."""
    if detector.dataset == GENERALIST:
        return held_out_scores(detector)
    title = f"{detector.dataset}/{detector.path.stem if detector.path else detector.architecture}"
    tables = sorted(paths.RESULTS.glob("*/cross_dataset.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for table_path in tables:
        try:
            table = pd.read_csv(table_path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if {"detector", "source", "auc", "trained_on_source"} - set(table.columns):
            continue
        rows = table[(table["detector"] == title) & ~table["trained_on_source"].astype(bool)]
        if len(rows):
            return rows
    return None


def held_out_scores(detector: Detector) -> pd.DataFrame | None:
    """For a generalist: the leave-one-generator-out figures of its input
    (``results/generalist/held_out.csv``): the same recipe trained without each generator, scored
    on that generator's images and photos; None before the study ran."""
    try:
        table = pd.read_csv(paths.RESULTS / GENERALIST / "held_out.csv")
        rows = table[(table["input"] == detector.architecture) & table["fold"].str.startswith("without")]
    except (OSError, KeyError, ValueError, pd.errors.ParserError):
        return None
    return rows.assign(source=[f"{g} (left out)" for g in rows["test_generator"]]) if len(rows) else None


def _elsewhere(named, table: pd.DataFrame, detector: Detector, device: str) -> list:
    """Per image outside ``detector``'s domain, the other datasets whose detector would see it
    inside (:func:`helpers.tools.predict.domains_elsewhere`); None for the others."""
    outside = [i for i, v in enumerate(table["in_domain"]) if v is False]
    out: list = [None] * len(table)
    if outside:
        loader = lambda p: load_detector(str(p), p.stat().st_mtime, device)
        for i, found in zip(outside, predict.domains_elsewhere([named[i] for i in outside],
                                                                detector.dataset, loader)):
            out[i] = found
    return out


def describe_model(detector: Detector) -> None:
    """Sidebar: which model and data produced the answers, and how accurate it was."""
    spec = DATASETS.get(detector.dataset)
    metrics = detector.metrics or {}
    size = detector.image_size
    lines = [f"**Model:** `{detector.architecture}` ({detector.path.name}, epoch {detector.epoch})",
             f"**Kind:** {KIND_TEXT.get(detector.architecture, 'trained from scratch')}",
             f"**Trained on:** {spec.title if spec else TRAINED_ON.get(detector.dataset, detector.dataset)}",
             f"**Input:** {size}x{size} px"]
    if "val_acc" in metrics:
        lines.append(f"**Validation accuracy:** {metrics['val_acc']:.2%}")
    if robustness_key(detector.robustness) is not None:  # what chose the default (on validation)
        r = detector.robustness
        lines.append(f"**Resized, blurred, cropped or recompressed** (validation): worst "
                     f"{r['worst_accuracy']:.1%}, under {r.get('worst_condition', '?')}")
    unseen = unseen_scores(detector)
    if unseen is None:
        lines.append("**On sources it never saw:** not scored yet (`make evaluate` fills notebook "
                     "05's cross-dataset matrix)")
    else:
        cells = "; ".join(f"{markdown_text(r.source)} {r.auc:.2f}" for r in unseen.dropna(subset=["auc"]).itertuples())
        lines.append(f"**On sources it never saw:** mean AUC {unseen['auc'].mean():.2f} "
                     f"(0.5 = chance; {cells})")
    lines.append(f"**Domain check:** {detector.domain_status}")
    st.sidebar.markdown("  \n".join(lines))
    if spec is not None and spec.is_demo:
        st.sidebar.warning("DEMO detector: trained on a small synthetic set (photo crops vs a small "
                           "GAN). Its accuracy is on that set only; its verdicts on your own "
                           "images mean little.")


def split_oversized(uploads) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """``(name, bytes)`` of files within the size limit, and ``(name, reason)`` of the others."""
    ok, refused = [], []
    for upload in uploads:
        data = upload.getvalue()
        if len(data) > MAX_UPLOAD_MB * 2**20:
            reason = (f"{len(data) / 2**20:.1f} MB is over this app's limit of {MAX_UPLOAD_MB} MB "
                      "per file; shrink or re-save it")
            refused.append((upload.name, reason))
        else:
            ok.append((upload.name, data))
    return ok, refused


def markdown_text(text: str) -> str:
    """``text`` shown literally by Streamlit's markdown (file names may hold ``*``, ``_``,
    ``$`` or ``[...]``, which would otherwise format the name instead of showing it)."""
    return "".join("\\" + ch if ch in "\\`*_[]<>$~#|" else ch for ch in printable(text))


def advice(error: str) -> str:
    """What to do about a file the decoder refused (its message says why)."""
    if error.startswith("no verdict"):
        return "Choose another checkpoint in the sidebar, or train this one again."
    if "too thin" in error or "too costly" in error:
        return "Crop or re-save it as an ordinary JPEG or PNG."
    if "not an image" in error:
        return "Upload a JPEG, PNG or WebP image."
    if "too large" in error:
        return "Scale it down (a few megapixels are plenty) and upload it again."
    if "corrupt" in error or "truncated" in error:
        return "The file is damaged or incomplete: upload it again or re-save it."
    return "Try re-saving it as JPEG or PNG."


def thumbnail(data: bytes) -> Image.Image:
    """A small upright copy of an upload, for display only (the model never sees it)."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (2 * SHOW_PX, 2 * SHOW_PX))  # JPEG: decode at a reduced scale
        img = ImageOps.exif_transpose(img)
        img.thumbnail((2 * SHOW_PX, 2 * SHOW_PX))
        return image_rule.to_rgb(img)


def _enlarge(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).resize((SHOW_PX, SHOW_PX), Image.Resampling.NEAREST)


def show_result(name: str, data: bytes, row, view: np.ndarray, heat: np.ndarray | None,
                method: str, size: int, threshold: float) -> None:
    """One uploaded image: the upload, the model's view, the CAM overlay and the verdict
    (and a note when malformed metadata was left out to decode it)."""
    with st.container(border=True):
        st.subheader(markdown_text(name))
        if isinstance(getattr(row, "note", None), str):
            st.warning(markdown_text(f"Decoded with a caveat: {row.note}"))
        # each picture is as wide as its column ("stretch"): a fixed pixel width ran over the
        # verdict in a 1300-px browser window (tests/test_app_browser.py measures the boxes)
        left, middle, right, verdict = st.columns([1, 1, 1, 1.1], gap="medium")
        try:
            left.image(thumbnail(data), caption="uploaded", width="stretch")
        except Exception:  # noqa: BLE001 - the display copy only; the verdict stands
            left.caption("uploaded file (cannot be displayed)")
        middle.image(_enlarge(view), caption=f"what the model sees ({size}x{size})", width="stretch")
        if heat is not None:
            what = ("main activation pattern (class-agnostic)" if method in cams.CLASS_AGNOSTIC
                    else f"evidence for {row.label} (red = strong)")
            right.image(_enlarge(heat), width="stretch", caption=f"{method}: {what}")
        verdict.metric("P(AI-generated)", f"{row.p_fake:.1%}")
        verdict.markdown(f"**Verdict: {LABEL_TEXT[row.label]}**")
        verdict.caption(f"FAKE when P >= {threshold:.1%} (the detector's threshold, chosen on "
                        "its validation images)")
        if getattr(row, "in_domain", None) is False:  # the domain check (helpers.core.domain)
            verdict.warning(f"**{verdicts.OUTSIDE}.** {elsewhere_text(getattr(row, 'elsewhere', None))}")


def show_explained(table: pd.DataFrame, named: list[tuple[str, bytes]], arrays: list, detector: Detector,
                   method: str, device) -> None:
    """Every image that got a verdict, with its ``method`` map (the verdicts stand without the
    map when it cannot be computed)."""
    good = [i for i, e in enumerate(table["error"]) if e is None or pd.isna(e)]
    if not good:
        return
    rows = table.iloc[good]
    views = np.stack([arrays[i] for i in good])
    heats: list[np.ndarray | None] = [None] * len(good)
    try:
        classes = (rows["p_fake"].to_numpy() >= detector.threshold).astype(int)
        maps = cams.explain(detector, views, classes, method, device=device)
        heats = [overlay(v, m) for v, m in zip(views, maps)]
    except Exception as err:  # noqa: BLE001 - the verdicts stand without the explanation
        st.warning(f"The {method} map could not be computed ({type(err).__name__}: {err}); "
                   "the probabilities below are unaffected.")
    for k, i in enumerate(good):
        show_result(named[i][0], named[i][1], rows.iloc[k], views[k], heats[k], method,
                    detector.image_size, detector.threshold)


def elsewhere_text(datasets) -> str:
    """Which other detectors would see an image as in their domain, in words."""
    if not isinstance(datasets, list):
        return ""
    if not datasets:
        return "No other trained detector sees it as in its domain either."
    names = ", ".join(DATASETS[d].title if d in DATASETS else d for d in datasets)
    return f"In the domain of the detector trained on: {names} (choose it in the sidebar)."


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    st.set_page_config(page_title="AI-generated image detector", layout="wide")
    st.title("Is this image AI-generated?")
    st.caption("Upload photos; a trained detector estimates the probability that each one was "
               "generated by AI, and a Grad-CAM map shows which part of the image drove the answer.")

    path = choose_detector(args.dataset)
    if path is None:
        return
    try:
        detector = load_detector(str(path), path.stat().st_mtime, args.device)
    except (ValueError, FileNotFoundError) as err:  # corrupt, foreign or outdated checkpoint
        st.error(f"Cannot use {path}: {err}")
        return
    describe_model(detector)
    method = st.sidebar.selectbox("Explanation", list(cams.METHODS), key="method",
                                  help="Grad-CAM and Grad-CAM++ explain the predicted class; "
                                       "EigenCAM shows the layer's main activation pattern")

    uploads = st.file_uploader(
        "Images (JPEG, PNG, WebP or any format Pillow reads)", type=UPLOAD_TYPES, accept_multiple_files=True,
        max_upload_size=MAX_UPLOAD_MB, key="uploads",
        help=f"Up to {MAX_UPLOAD_MB} MB per file. Each image is scaled so its shorter side is "
             f"{detector.image_size} px and centre-cropped, exactly as in training.")
    if not uploads:
        st.info("Upload one or more images to classify them.")
        return

    named, refused = split_oversized(uploads)
    with st.spinner(f"Classifying {len(named)} image(s) ..."):
        arrays, errors, notes, sides = predict.decode_images(named, detector, with_sides=True)  # decoded once
        device = next(detector.model.parameters()).device
        table = predict.classify_decoded([n for n, _ in named], arrays, errors, detector,
                                         device=str(device), notes=notes, sides=sides)
        table["elsewhere"] = _elsewhere(named, table, detector, args.device)
    for name, reason in refused:
        st.error(markdown_text(f"{name}: {reason}"))
    if any(isinstance(e, str) and e.startswith("no verdict") for e in table["error"]):
        st.error(markdown_text(f"This detector is broken: it gives NaN instead of a probability "
                               f"({path.name}; a float16 run that overflowed leaves such a model). "
                               "It gives no verdict on any image."))
    for row in table[table["error"].notna()].itertuples():
        st.error(markdown_text(f"{row.file}: {row.error}. {advice(row.error)}"))

    show_explained(table, named, arrays, detector, method, device)
    results = pd.concat([table, pd.DataFrame({"file": [printable(n) for n, _ in refused],
                                              "p_fake": np.nan, "label": None,
                                              "error": [r for _, r in refused], "note": None})],
                        ignore_index=True) if refused else table
    with st.expander("All results as a table"):
        st.dataframe(results, hide_index=True)
        st.download_button("Download CSV", results.to_csv(index=False), "ai_detector_results.csv",
                           "text/csv")
    st.caption("Red areas of the overlay pushed the detector towards its verdict. The maps are "
               "coarse (one cell of the network's last spatial layer covers several pixels) and "
               "show correlation, not proof. A detector only knows the generators it was "
               "trained on.")


if __name__ == "__main__":  # `streamlit run` and AppTest execute the file as __main__
    main()
