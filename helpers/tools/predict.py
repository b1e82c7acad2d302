"""Classify your own images: the probability that each one is AI-generated.

    python -m helpers.tools.predict PATH... [--model CHECKPOINT] [--dataset NAME] [--csv OUT]
    make predict IMAGES="photo.jpg folder/" DATASET=demo

PATHs are image files or folders (searched recursively, symbolic links followed; every entry
that is not classified is listed with its reason). Every
image goes through exactly the preprocessing of training, :func:`helpers.core.images.decode`
(EXIF orientation, RGB conversion, the dataset's JPEG harmonisation if it has one, shorter
side to the model's size and a centre crop).
All images are decoded first (in threads), then classified in batches by one model load.

Files that cannot be read, and images the detector scores NaN (a broken model: no verdict), are
listed with the reason and do not stop the run; a file whose
malformed metadata was left out is classified, with a note saying so. File names are shown
escaped where they are not valid text (:func:`helpers.core.paths.printable`). Exit code:
0 all images classified, 1 some failed, 2 usage error or no usable model.

:func:`classify_files` and :func:`classify_images` (for uploaded bytes) are the same
pipeline as functions, returning a table; the Streamlit app uses them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import images as image_rule
from ..core.accel import pick_device
from ..core.detector import Detector, best_path
from ..core.image_cost import identified
from ..core.images import IMAGE_SUFFIXES, BadImageError
from ..core.paths import printable
from ..core.selection import kind_note
from ..data.datasets import DATASETS
from ..data.entries import walk_folder
from .verdicts import COLUMNS, domain_summary, print_table, verdict_table, write_csv

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
#: Files decoded before each round of forward passes (bounds memory for large folders).
CHUNK_IMAGES = 4096


def _image_like(path: Path) -> bool:
    """A folder's file is classified when its suffix is one Pillow decodes
    (:data:`helpers.core.images.IMAGE_SUFFIXES`) or Pillow identifies its header."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as file:
            return identified(file)
    except OSError:
        return True  # decode_file says why it cannot be read


def _folder(path: Path, shown: str) -> tuple[list[Path], list[tuple[str, str]]]:
    files, problems = [], []
    for entry in walk_folder(path):
        where = path / entry.rel
        if entry.problem:
            problems.append((printable(where), entry.problem))
        elif _image_like(where):
            files.append(where)
        else:
            problems.append((printable(where), (f"not an image file (suffix {where.suffix or 'none'}; "
                                               "Pillow cannot identify it)")))
    if not files and not problems:
        problems.append((shown, "folder holds no files"))
    return files, problems


def expand_paths(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to classify and ``(entry, reason)`` for every entry that gives none.

    A file named on the command line is taken whatever its suffix (the decoder decides). A
    folder is walked as the data step walks one (:func:`helpers.data.entries.walk_folder`:
    links followed as torchvision's ``ImageFolder`` follows them, loops reported): it
    contributes every file Pillow can decode (by suffix, else by header), sorted, and every
    other entry with its reason (a file Pillow cannot identify, an empty file, a folder named
    like an image that holds nothing, a dangling link, a FIFO, a link loop). Only names
    starting with ``.`` are passed over, as in the data step.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found, trouble = _folder(path, printable(item))
            files += found
            problems += trouble
        elif path.is_symlink() and not path.exists():
            problems.append((printable(item), (f"broken symbolic link (its target "
                                              f"{printable(os.readlink(path))} does not exist)")))
        elif path.exists():
            files.append(path)
        else:
            problems.append((printable(item), "no such file or folder"))
    return files, problems


def _reason(err: BadImageError, name: str) -> str:
    text = str(err)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


Decoder = Callable[[], tuple[np.ndarray, image_rule.ImageInfo]]


def _note(info: image_rule.ImageInfo) -> str | None:
    return "; ".join(info.notes) or None


def _decode_all(names: Sequence[str], decoders: Sequence[Decoder], workers: int | None
                ) -> tuple[list[np.ndarray | None], list[str | None], list[str | None]]:
    """Run the decoders in a thread pool (Pillow releases the GIL while decoding): arrays (None
    where decoding failed), errors and notes, one per decoder."""
    return _decode_with_sides(names, decoders, workers)[:3]


def _decode_with_sides(names: Sequence[str], decoders: Sequence[Decoder], workers: int | None):
    """:func:`_decode_all` and, fourth, each file's shorter side in px (NaN where it failed),
    which the domain check's resize rule reads."""
    def run(i: int):
        try:
            array, info = decoders[i]()
            return array, None, _note(info), float(min(info.width, info.height))
        except BadImageError as err:
            return None, _reason(err, names[i]), None, float("nan")

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(decoders) <= 1:
        out = [run(i) for i in range(len(decoders))]
    else:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(run, range(len(decoders))))
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out], [o[3] for o in out]


def classify_decoded(names: Sequence[str], arrays: Sequence[np.ndarray | None],
                     errors: Sequence[str | None], detector: Detector, device: str = "cpu",
                     batch_size: int | None = None, threshold: float | None = None,
                     notes: Sequence[str | None] | None = None, sides=None) -> pd.DataFrame:
    """The result table for already decoded images (None where decoding failed, with its error;
    ``notes`` and ``sides`` from :func:`decode_images`). ``threshold`` None: the detector's own."""
    p_fake = _scores(arrays, detector, device, batch_size)
    return verdict_table(names, p_fake, errors, detector.decision_threshold(threshold), notes,
                  _domain(arrays, sides, detector))


def _domain(arrays: Sequence[np.ndarray | None], sides, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """The domain check's (score, in_domain) per image: NaN and None where there is no image
    or the checkpoint has no check (:meth:`Detector.in_domain`)."""
    score, inside = np.full(len(arrays), np.nan), np.full(len(arrays), None, dtype=object)
    ok = [i for i, a in enumerate(arrays) if a is not None]
    if ok:
        known = None if sides is None else np.asarray(sides, dtype=np.float64)[ok]
        score[ok], inside[ok] = detector.in_domain(np.stack([arrays[i] for i in ok]), known)
    return score, inside


def _scores(arrays: Sequence[np.ndarray | None], detector: Detector, device: str,
            batch_size: int) -> np.ndarray:

    p_fake = np.full(len(arrays), np.nan)
    ok = [i for i, a in enumerate(arrays) if a is not None]
    if ok:
        batch = np.stack([arrays[i] for i in ok])
        p_fake[ok] = detector.predict_proba(batch, device, batch_size)
    return p_fake


def _classify(names: Sequence[str], decoders: Sequence[Decoder], detector: Detector,
              device: str, batch_size: int, threshold: float | None,
              workers: int | None) -> pd.DataFrame:
    chunk = max(CHUNK_IMAGES, batch_size or 0)  # bounded memory for any number of files
    scores, errors, notes, domain = [np.zeros(0)], [], [], [(np.zeros(0), np.zeros(0, dtype=object))]
    for start in range(0, len(names), chunk):
        arrays, chunk_errors, chunk_notes, sides = _decode_with_sides(
            names[start:start + chunk], decoders[start:start + chunk], workers)
        scores.append(_scores(arrays, detector, device, batch_size))
        domain.append(_domain(arrays, sides, detector))
        errors += chunk_errors
        notes += chunk_notes
    return verdict_table(names, np.concatenate(scores), errors, detector.decision_threshold(threshold), notes,
                  (np.concatenate([d[0] for d in domain]), np.concatenate([d[1] for d in domain])))


def classify_files(paths: Sequence[str | os.PathLike], detector: Detector, device: str = "cpu",
                   batch_size: int | None = None, threshold: float | None = None,
                   workers: int | None = None) -> pd.DataFrame:
    """Classify image files with a loaded detector (:meth:`helpers.core.detector.Detector.load`).

    Returns one row per path, in order: ``file`` (escaped where not valid text), ``p_fake``
    (P(AI-generated), NaN when unreadable), ``label`` (``FAKE`` when ``p_fake >= threshold``,
    else ``REAL``; None when unreadable), ``error`` (None, or why the file could not be read),
    ``note`` (None, or the malformed metadata that was left out to decode it), ``in_domain``
    (whether the image is like the detector's training data, :mod:`helpers.core.domain`;
    None when unknown: unreadable, or a checkpoint without a domain check) and
    ``domain_score`` (the check's score, NaN when unknown; in domain at or below its threshold).
    ``threshold`` None: the detector's own (:meth:`Detector.decision_threshold`).
    """
    size, quality = detector.image_size, preprocessing_jpeg_quality(detector)
    names = [printable(p) for p in paths]  # decode_file names its errors the same way
    decoders = [lambda p=p: image_rule.decode_file(p, size, quality) for p in paths]
    return _classify(names, decoders, detector, device, batch_size, threshold, workers)


def decode_images(named_bytes: Sequence[tuple[str, bytes]], detector: Detector, workers: int | None = None,
                  with_sides: bool = False):
    """Model inputs for in-memory files by the training rule: (arrays or None, errors or None,
    notes or None), one of each per file; ``with_sides``: and fourth, each file's shorter side
    in px (NaN where decoding failed), for :func:`classify_decoded`'s domain check."""
    size, quality = detector.image_size, preprocessing_jpeg_quality(detector)
    names = [printable(name) for name, _ in named_bytes]
    decoders = [lambda d=data, n=n: image_rule.decode(d, size, n, quality)
                for n, (_, data) in zip(names, named_bytes)]
    decoded = _decode_with_sides(names, decoders, workers)
    return decoded if with_sides else decoded[:3]


def classify_images(named_bytes: Sequence[tuple[str, bytes]], detector: Detector,
                    device: str = "cpu", batch_size: int | None = None, threshold: float | None = None,
                    workers: int | None = None) -> pd.DataFrame:
    """:func:`classify_files` for in-memory files, e.g. uploads: ``[(name, bytes), ...]``."""
    arrays, errors, notes, sides = decode_images(named_bytes, detector, workers, with_sides=True)
    names = [str(name) for name, _ in named_bytes]
    return classify_decoded(names, arrays, errors, detector, device, batch_size, threshold,
                            notes, sides)


def domains_elsewhere(named_bytes: Sequence[tuple[str, bytes]], exclude: str,
                      load: Callable[[Path], Detector] = Detector.load) -> list[list[str]]:
    """For each in-memory file, the other datasets (not ``exclude``) whose best detector
    (:func:`helpers.core.detector.best_path`) sees it as in its domain: decoded at that
    detector's size, scored by its own domain check and resize rule. Datasets without a
    detector, or whose detector has no domain check, are left out. ``load`` reads a checkpoint
    (the app passes its cached loader)."""
    found: list[list[str]] = [[] for _ in named_bytes]
    for dataset in sorted(DATASETS):
        if dataset == exclude or not named_bytes:
            continue
        try:
            other = load(best_path(dataset))
        except (FileNotFoundError, ValueError):
            continue
        if other.domain is None:
            continue
        arrays, _, _, sides = decode_images(named_bytes, other, with_sides=True)
        _, inside = _domain(arrays, sides, other)
        for i, value in enumerate(inside):
            if value is True or value is np.True_:
                found[i].append(dataset)
    return found


def _preprocessing_rule() -> str:
    """The numbered rule from :mod:`helpers.core.images`' docstring (one source of truth)."""

    doc = image_rule.__doc__ or ""
    match = re.search(r"^1\. .*?(?=\n\s*\n)", doc, flags=re.DOTALL | re.MULTILINE)
    rule = match.group(0) if match else doc.strip()
    return "\n".join(("  " if re.match(r"\d+\. ", line.strip()) else "     ") + line.strip()
                     for line in rule.splitlines())


def preprocessing_jpeg_quality(detector: Detector) -> int | None:
    """The JPEG harmonisation quality (rule 3 of :mod:`helpers.core.images`) of the detector's
    training data: recorded in its training configuration or, failing that, its dataset's spec."""
    for key in ("harmonise_jpeg", "jpeg_quality"):
        if key in detector.config:
            return detector.config[key] or None
    spec = DATASETS.get(detector.dataset)
    return spec.harmonise_jpeg if spec else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.tools.predict",
        description="Print, for each image, the probability that it is AI-generated (FAKE) "
                    "according to a trained detector, and its label: FAKE if P >= the "
                    "detector's threshold, chosen on its validation split and saved with it.",
        epilog="Preprocessing is the same as in training (helpers/core/images.py, module docstring):\n"
               f"{_preprocessing_rule()}\n\n"
               "Exit code: 0 all images classified, 1 some could not be read (listed with the "
               "reason),\n2 usage error or no usable model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files or folders (searched recursively)")
    parser.add_argument("--model", metavar="CHECKPOINT",
                        help="detector checkpoint (.pt); default: the best checkpoint of --dataset")
    parser.add_argument("--dataset", default="demo",
                        help="dataset whose best detector is used when --model is not given "
                             "(default: demo)")
    parser.add_argument("--csv", metavar="OUT", help="also write the table (file, p_fake, "
                                                     "label, error, note, in_domain, domain_score) "
                                                     "to this CSV file")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="images per forward pass (default: 64 on a CPU, 512 on a GPU)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold on P(AI-generated) (default: the detector's own, "
                             "chosen on its validation split)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, mps or auto (default: auto)")
    return parser


def _load(args) -> tuple[Detector, str]:
    device = str(pick_device(args.device))
    path = Path(args.model).expanduser() if args.model else best_path(args.dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return Detector.load(path, device=device), device


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``aidetect-predict``); returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a name no terminal encoding can show: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return int(exit_.code or 0)
    if args.batch_size is not None and args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("error: --threshold must lie in [0, 1]", file=sys.stderr)
        return EXIT_USAGE
    try:
        detector, device = _load(args)
    except Exception as err:  # noqa: BLE001 - missing, foreign or corrupt checkpoint: say what to do
        print(f"error: no usable detector: {err}\nTrain one first (make train "
              f"DATASET={args.dataset}) or pass --model PATH/TO/CHECKPOINT.pt", file=sys.stderr)
        return EXIT_USAGE
    threshold = detector.decision_threshold(args.threshold)
    size = detector.image_size
    print(f"model {detector.path} ({detector.architecture}, trained on {detector.dataset}, "
          f"{kind_note(detector.config, detector.robustness)}{'' if args.model else ', the dataset default'}, "
          f"{size}x{size} input, device {device}); FAKE when P >= {threshold:.3g} "
          f"({'given' if args.threshold is not None else detector.threshold_source})", file=sys.stderr)
    if detector.dataset == "demo":
        print("warning: this is the DEMO detector, trained on a small synthetic set; its verdicts "
              "on real-world images mean nothing.", file=sys.stderr)

    files, problems = expand_paths(args.paths)
    table = classify_files(files, detector, device=device, batch_size=args.batch_size,
                           threshold=threshold)
    if problems:
        table = pd.concat([table, pd.DataFrame(
            {"file": [p for p, _ in problems], "p_fake": np.nan, "label": None,
             "error": [r for _, r in problems], "note": None}, columns=COLUMNS)],
            ignore_index=True)
    print_table(table)
    print(domain_summary(table, detector), file=sys.stderr)
    if args.csv:
        write_csv(table, args.csv)
        print(f"table written to {args.csv}", file=sys.stderr)
    return EXIT_SOME_FAILED if table["error"].notna().any() else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
