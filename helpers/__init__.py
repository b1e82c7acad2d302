"""Shared code of the notebooks, laid out like the pipeline.

Each step of ``notebooks/`` has one subpackage, the two user tools one more, over a small core:

=============  =====================================================================
``core``       paths, devices and speed, seeds, atomic I/O and fingerprints, confidence
               intervals, the image rule, the models, what a trained detector is
``data``       01: datasets, their sources (Kaggle, local copy, offline demo), the cache
``explore``    02: class balance, formats, shortcuts, near-duplicates, spectra
``training``   03: configuration, device-side batches, the loop (``python -m helpers.training``)
``gan``        04: DCGAN, its training, quality (FID/KID) and the exported second generator
``evaluation`` 05: metrics with CIs, robustness, comparisons, breakdowns, cross-dataset
``explain``    06: Grad-CAM maps and their faithfulness
``tools``      ``predict`` (command line) and ``app`` (Streamlit)
``report``     the results index and the README's results table (``make index``)
=============  =====================================================================

Each step's package keeps computation, text and figures in separate modules. Imports go
downwards only (core <- data <- the steps <- tools); ``tests/test_layout.py`` checks it.
"""

__version__ = "0.1.0"
