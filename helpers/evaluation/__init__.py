"""Step 05, evaluation: notebook 05's run, section by section (:mod:`.session`,
:mod:`.sections`), metrics with confidence intervals (:mod:`.metrics`), robustness
(:mod:`.robustness`), the comparison of a dataset's detectors and its checks (:mod:`.compare`),
breakdowns by protocol, category and time (:mod:`.breakdown`), detectors scored on other
datasets' sources (:mod:`.cross_dataset`), findings in words (:mod:`.text`) and figures
(:mod:`.figures`).
"""
