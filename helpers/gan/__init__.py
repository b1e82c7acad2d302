"""Step 04, the GAN: networks (:mod:`.networks`), training (:mod:`.train`), the exported second
generator (:mod:`.export`), image quality, FID and KID (:mod:`.quality`), figures (:mod:`.figures`).
"""
