"""Shared code for the AI-generated-image detection notebooks.

The notebooks in ``notebooks/`` tell the story; this package holds the few pieces of logic
they share: the dataset registry and cache (:mod:`helpers.data`), the offline demo set
(:mod:`helpers.demo`), models and the training loop (:mod:`helpers.models`,
:mod:`helpers.train`), the GAN (:mod:`helpers.gan`), evaluation, Grad-CAM and reporting.
"""

__version__ = "0.1.0"
