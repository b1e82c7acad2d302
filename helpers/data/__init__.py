"""Step 01, the data: the datasets the project knows (:mod:`.datasets`), where their raw files
come from (:mod:`.sources`: Kaggle, a local copy, the offline demo of :mod:`.demo`) and the
decoded uint8 cache every later step reads (:mod:`.cache`).
"""
