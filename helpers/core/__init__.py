"""The core every step shares: paths, devices and speed settings (:mod:`.accel`), seeds,
atomic I/O and fingerprints (:mod:`.repro`), confidence intervals (:mod:`.stats`), the image
rule (:mod:`.images`), the models (:mod:`.models`), what a trained detector is
(:mod:`.detector`), the notebooks' setup (:mod:`.notebook`) and parameter check
(:mod:`.parameters`), and the import graph (:mod:`.imports`)."""
