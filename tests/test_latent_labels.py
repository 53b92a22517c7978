"""Latent-action labels beside a dataset: round trip and the errors that name the fix."""

import numpy as np
import pytest

from vla.latent.labels import LatentLabels, check_same_model, has_labels, read_labels, write_labels


def labels(seed: int = 0, fingerprint: str = "a" * 64) -> LatentLabels:
    codes = np.random.default_rng(seed).integers(0, 16, size=(30, 4))
    return LatentLabels(codes, lam="outputs/lam", lam_fingerprint=fingerprint, codebook_size=16, frame_gap=5)


def test_round_trip(tmp_path):
    assert not has_labels(tmp_path)
    written = labels()
    write_labels(tmp_path, written)
    read = read_labels(tmp_path, num_frames=30)
    assert has_labels(tmp_path)
    np.testing.assert_array_equal(read.codes, written.codes)
    assert (read.tokens_per_frame, read.codebook_size, read.frame_gap, read.lam) == (4, 16, 5, "outputs/lam")


def test_missing_labels_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="vla-latent label"):
        read_labels(tmp_path)


def test_labels_of_another_length_are_refused(tmp_path):
    write_labels(tmp_path, labels())
    with pytest.raises(ValueError, match="cover 30 frames; the dataset has 31"):
        read_labels(tmp_path, num_frames=31)


def test_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"0\.\.15"):
        LatentLabels(np.full((2, 4), 16), lam="x", lam_fingerprint="f", codebook_size=16, frame_gap=1)


def test_two_models_are_refused():
    check_same_model({"a": labels(), "b": labels(seed=1)})
    with pytest.raises(ValueError, match="different latent action models"):
        check_same_model({"a": labels(), "b": labels(fingerprint="b" * 64)})
