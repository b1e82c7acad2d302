"""Step 03, training a detector: the configuration and each dataset's default (:mod:`.config`),
the device-side loader (:mod:`.batches`) and the loop (:mod:`.loop`). Command line:
``python -m helpers.training --dataset demo``.
"""
