"""Shared code of the notebooks, laid out like the pipeline.

Each step of ``notebooks/`` has one subpackage, the two user tools one more, over a small core:

=============  =====================================================================
``core``       paths, devices and speed, seeds, atomic I/O and fingerprints, confidence
               intervals, the image rule, the models, what a trained detector is
``data``       01: datasets, their sources (Kaggle, local copy, offline demo), the cache
``explore``    02: class balance, formats, shortcuts, near-duplicates, spectra
``training``   03: configuration, device-side batches, the loop (``python -m helpers.training``)
``gan``        04: the GAN (DCGAN + data-efficient recipes), quality (FID/KID) and its exported images
``evaluation`` 05: metrics with CIs, robustness, comparisons, breakdowns, cross-dataset
``explain``    06: Grad-CAM maps and their faithfulness
``tools``      ``predict`` (command line) and ``app`` (Streamlit)
``report``     the results index and the README's results table (``make index``)
``publish``    committed results a clone can afford and that don't churn (``make index``)
=============  =====================================================================

Each step's package keeps computation, text and figures in separate modules. Imports go
downwards (core <- data <- the steps <- tools), with three named exceptions between steps (the
demo's generator and the exported GAN images from ``gan``, the maps the app shows from
``explain``); ``tests/test_layout.py`` checks them and that there is no cycle.
"""

import warnings

# tqdm.auto warns on import where ipywidgets is absent and falls back to text bars, which is
# what papermill's log shows anyway: the warning would only stand in red in every report
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
