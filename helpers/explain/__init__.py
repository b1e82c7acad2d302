"""Step 06, explanations: Grad-CAM maps (:mod:`.cams`), their faithfulness (:mod:`.faithfulness`),
findings in words (:mod:`.text`) and figures (:mod:`.figures`).
"""
