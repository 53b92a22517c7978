"""Action tokenizers (vla/tokenizers): round trips on held-out chunks, save/load, shape errors, malformed ids."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import draccus
import numpy as np
import pytest

from vla.tokenizers import (
    ActionTokenizer,
    BinsTokenizer,
    BinsTokenizerConfig,
    FastTokenizer,
    FastTokenizerConfig,
    TokenizerConfig,
    build_tokenizer,
    tokenizer_config_class,
)
from vla.tokenizers.base import META_FILE
from vla.tokenizers.fast import BPE_FILE

NAMES = ["bins", "fast"]


def smooth_chunks(n: int, horizon: int, dim: int, seed: int) -> np.ndarray:
    """[n, H, D] normalised-looking trajectories: three random sinusoids per dim + small noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    x = np.zeros((n, horizon, dim))
    for _ in range(3):
        amp, freq, phase = (rng.uniform(lo, hi, (n, 1, dim)) for lo, hi in [(0, 0.4), (0.2, 1.5), (0, 2 * np.pi)])
        x += amp * np.sin(2 * np.pi * freq * t + phase)
    x += 0.01 * rng.standard_normal(x.shape)
    return np.clip(x, -1.0, 1.0)


@pytest.fixture(scope="module", params=[(8, 4), (16, 7)], ids=["H8xD4", "H16xD7"])
def data(request):
    horizon, dim = request.param
    return smooth_chunks(500, horizon, dim, seed=0), smooth_chunks(200, horizon, dim, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    return {name: build_tokenizer(name).fit(train, embodiment="sawyer") for name in NAMES}


def test_registry_builds_each_by_name():
    assert isinstance(build_tokenizer("bins"), BinsTokenizer)
    assert isinstance(build_tokenizer("fast"), FastTokenizer)
    assert build_tokenizer(BinsTokenizerConfig(n_bins=64)).vocab_size == 64
    assert tokenizer_config_class("fast") is FastTokenizerConfig
    with pytest.raises(ValueError, match="Did you mean 'fast'"):
        tokenizer_config_class("fsat")


def test_bins_round_trip_within_half_a_bin(data, fitted):
    _, test = data
    tok = fitted["bins"]
    tokens = tok.encode(test)
    assert all(len(t) == test.shape[1] * test.shape[2] for t in tokens)
    assert min(map(min, tokens)) >= 0 and max(map(max, tokens)) < 256
    err = np.abs(tok.decode(tokens) - test)  # (N, H, D)
    inside = (test >= tok.low) & (test <= tok.high)
    half = np.broadcast_to(tok.bin_width / 2, test.shape)
    assert np.all(err[inside] <= half[inside] + 1e-6)
    # outside the 1-99% range a value is clipped into the edge bin
    assert np.all(err[~inside] <= (np.abs(test - np.clip(test, tok.low, tok.high)) + half + 1e-6)[~inside])
    report = tok.round_trip_error(test)
    assert report["tokens_per_chunk"] == test.shape[1] * test.shape[2]
    assert report["mean_abs_error"] < 0.005  # measured 0.0031-0.0037 (half a bin is ~0.0026 here)


def test_bins_range_is_the_1_99_percentile():
    values = np.linspace(-3.0, 3.0, 1001)
    chunks = np.stack([values, 10 * values], axis=-1)[:, None, :]  # (1001, 1, 2)
    tok = BinsTokenizer(BinsTokenizerConfig()).fit(chunks)
    np.testing.assert_allclose(tok.low, np.quantile(chunks[:, 0], 0.01, axis=0))
    np.testing.assert_allclose(tok.high, [2.94, 29.4])
    # values beyond the range land in the edge bins and decode to their centres
    ids = tok.encode(np.array([[[100.0, -100.0]]]))[0]
    assert ids == [255, 0]
    np.testing.assert_allclose(tok.decode([ids])[0, 0], [tok.high[0] - tok.bin_width[0] / 2,
                                                       tok.low[1] + tok.bin_width[1] / 2], rtol=1e-6)


def test_bins_constant_dimension_decodes_exactly():
    chunks = smooth_chunks(50, 8, 3, seed=2)
    chunks[..., 2] = 0.25  # e.g. a gripper that never moves
    tok = build_tokenizer("bins").fit(chunks)
    np.testing.assert_allclose(tok.decode(tok.encode(chunks))[..., 2], 0.25, atol=1e-7)


def test_config_parses_from_dotted_flags():
    @dataclass
    class Recipe:
        tokenizer: TokenizerConfig = field(default_factory=BinsTokenizerConfig)

    recipe = draccus.parse(Recipe, args=["--tokenizer.type", "fast", "--tokenizer.scale", "5"])
    assert recipe.tokenizer == FastTokenizerConfig(scale=5.0)
    assert "type: bins" in draccus.dump(Recipe())


@pytest.mark.parametrize("n_bins", [1, 0, 70000])
def test_bins_count_out_of_range_is_refused(n_bins):
    with pytest.raises(ValueError, match=f"n_bins must be in .*got {n_bins}"):
        BinsTokenizerConfig(n_bins=n_bins)


def test_fast_round_trip_and_compression(data, fitted):
    _, test = data
    tok = fitted["fast"]
    horizon, dim = test.shape[1:]
    assert tok.vocab_size <= 1024
    tokens = tok.encode(test)
    assert min(map(min, tokens)) >= 0 and max(map(max, tokens)) < tok.vocab_size
    report = tok.round_trip_error(test)
    # rounding each orthonormal DCT coefficient errs by <= 0.5/scale, so the RMS error is <= 0.05 at scale 10;
    # uniform rounding gives ~0.29/scale; measured mean 0.018-0.021, max 0.09
    assert report["mean_abs_error"] < 0.03
    assert report["max_abs_error"] < 0.2
    # measured 11.7 tokens for 32 values (H8xD4), 23.6 for 112 (H16xD7)
    assert report["tokens_per_chunk"] < 0.5 * horizon * dim
    assert report["max_tokens_per_chunk"] <= tok.max_tokens_per_chunk


def test_fast_coefficients_are_coefficient_major():
    tok = build_tokenizer("fast")
    chunk = np.zeros((1, 4, 3))
    chunk[0, :, 1] = 0.5  # a constant dim 1: only its 0th (DC) coefficient is non-zero
    coeffs = tok.coefficients(chunk)[0]  # (H*D,)
    assert coeffs.tolist() == [0, 10, 0] + [0] * 9  # 0.5 * sqrt(4) * scale 10, at position (freq 0, dim 1)


def test_fast_finer_scale_gives_smaller_error_and_more_tokens(data):
    train, test = data
    coarse = FastTokenizer(FastTokenizerConfig(scale=5)).fit(train).round_trip_error(test)
    fine = FastTokenizer(FastTokenizerConfig(scale=40)).fit(train).round_trip_error(test)
    assert fine["mean_abs_error"] < coarse["mean_abs_error"] / 4
    assert fine["tokens_per_chunk"] > coarse["tokens_per_chunk"]


def test_fast_vocab_too_small_for_the_coefficients_is_refused(data):
    train, _ = data
    with pytest.raises(ValueError, match=r"vocab_size=8 is smaller than the \d+ distinct rounded DCT coefficients"):
        FastTokenizer(FastTokenizerConfig(vocab_size=8)).fit(train)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_tokens_and_actions(name, data, fitted, tmp_path):
    _, test = data
    tok = fitted[name]
    tok.save(tmp_path / name)
    back = ActionTokenizer.load(tmp_path / name, embodiment="sawyer")
    assert type(back) is type(tok) and back.config == tok.config
    assert (back.horizon, back.action_dim, back.embodiment) == (tok.horizon, tok.action_dim, "sawyer")
    assert back.vocab_size == tok.vocab_size
    tokens = tok.encode(test)
    assert back.encode(test) == tokens
    np.testing.assert_array_equal(back.decode(tokens), tok.decode(tokens))


@pytest.mark.parametrize("name", NAMES)
def test_load_refuses_another_embodiment(name, fitted, tmp_path):
    fitted[name].save(tmp_path)
    with pytest.raises(ValueError, match="fit on 'sawyer', not 'so101'"):
        ActionTokenizer.load(tmp_path, embodiment="so101")


@pytest.mark.parametrize("name,missing", [("bins", META_FILE), ("fast", META_FILE), ("fast", BPE_FILE)])
def test_load_with_a_missing_file_names_it(name, missing, fitted, tmp_path):
    fitted[name].save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        ActionTokenizer.load(tmp_path)


def test_load_of_another_format_version_is_refused(fitted, tmp_path):
    fitted["bins"].save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        ActionTokenizer.load(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_width_or_horizon_names_expected_and_got(name, data, fitted):
    _, test = data
    tok = fitted[name]
    horizon, dim = test.shape[1:]
    with pytest.raises(ValueError, match=rf"fit for action dim D={dim}; got chunks of shape .*\(D={dim + 1}\)"):
        tok.encode(np.zeros((2, horizon, dim + 1)))
    with pytest.raises(ValueError, match=rf"fit for horizon H={horizon}; got chunks of shape .*\(H={horizon - 1}\)"):
        tok.round_trip_error(np.zeros((2, horizon - 1, dim)))
    with pytest.raises(ValueError, match=r"must be \[B, H, D\]; got shape \(8, 4\)"):
        tok.encode(np.zeros((8, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        tok.encode(np.full((1, horizon, dim), np.nan))


@pytest.mark.parametrize("name", NAMES)
def test_unfit_tokenizer_says_to_fit(name):
    with pytest.raises(RuntimeError, match=r"call fit\(chunks\) or load"):
        build_tokenizer(name).encode(np.zeros((1, 8, 4)))


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_malformed_tokens_keeps_the_shape(name, data, fitted):
    _, test = data
    tok = fitted[name]
    horizon, dim = test.shape[1:]
    valid = tok.encode(test[:1])[0]
    rng = np.random.default_rng(0)
    garbage = [[], [-5, 10**9, 3], valid[: len(valid) // 2], valid * 3, rng.integers(-50, 5000, 300).tolist()]
    out = tok.decode(garbage)
    assert out.shape == (len(garbage), horizon, dim) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.abs(tok.decode([valid + valid])[0] - test[0]).max() < 0.2  # extra tokens are dropped
    assert tok.decode([]).shape == (0, horizon, dim)
