"""Datasets, in-memory action chunks and per-embodiment normalisation."""

from vla.data.dataset import ChunkedDemos, check_finite, load_chunked_demos
from vla.data.normalize import Normalizer, compute_stats

__all__ = ["ChunkedDemos", "Normalizer", "check_finite", "compute_stats", "load_chunked_demos"]
