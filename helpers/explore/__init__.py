"""Step 02, exploring the data: computations (:mod:`.stats`) and figures (:mod:`.figures`).
"""
