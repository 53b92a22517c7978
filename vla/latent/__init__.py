"""Latent actions (UniVLA, Bu et al., RSS 2025, arXiv 2505.06111): discrete codes for what changed between two
frames, learned from video without action labels, as a pretraining target for the policy's `latent` head.

- `features`: the frozen feature space frames are compared in (pixel patches, or DINOv2 patch tokens).
- `text`: the frozen instruction embedding of stage 1 (hashed words, or a transformers text encoder).
- `lam`: the latent action model (two-stage VQ inverse / forward dynamics), saved as a folder with a fingerprint.
- `pairs`: frame pairs (t, t + k) and instructions read from frame sources, never an action.
- `training`: the seeded two-stage fit. `inference`: codes for every frame of a source (the labels).
- `report`: diagnostics (codebook use, reconstruction vs copying frame t, whether codes carry motion).
- `labels`: the latent-action labels written beside a dataset (`vla-latent label`) and read by frame sources.
- `cli`: `vla-latent fit | label | report`.
"""
