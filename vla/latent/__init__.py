"""Latent actions (UniVLA, Bu et al., RSS 2025, arXiv 2505.06111): discrete codes for what changed between two
frames, learned from video without action labels, as a pretraining target for the policy's `latent` head.

- `labels`: the latent-action labels written beside a dataset (`vla-latent label`) and read by frame sources.
"""
