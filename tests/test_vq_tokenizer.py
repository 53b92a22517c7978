"""The VQ-VLA tokenizer (vla/tokenizers/vq.py), synthetic chunks and `vla-tokenizer fit`: reconstruction,
codebook use and dead-code restarts, causality, save/load, determinism, bad input, the command's report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from vla.tokenizers import ActionTokenizer, VQTokenizer, VQTokenizerConfig, build_tokenizer
from vla.tokenizers.base import META_FILE
from vla.tokenizers.synthetic import synthetic_chunks
from vla.tokenizers.vq import WEIGHTS_FILE, ConvRVQ, train_autoencoder

H, D = 8, 4
# small enough for a few CPU seconds: 2 latent steps x 4 levels = 8 ids per chunk of 32 values
SMALL = VQTokenizerConfig(levels=4, codebook_size=32, downsample=4, hidden=32, code_dim=16, steps=200,
                          batch_size=64, log_every=50)


@pytest.fixture(scope="module")
def data():
    return synthetic_chunks(1500, H, D, seed=0), synthetic_chunks(300, H, D, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    return build_tokenizer(SMALL).fit(train, embodiment="sawyer")


def test_synthetic_chunks_are_smooth_seeded_and_in_range():
    chunks = synthetic_chunks(200, 16, 3, seed=5)
    assert chunks.shape == (200, 16, 3) and np.abs(chunks).max() <= 1.0
    np.testing.assert_array_equal(chunks, synthetic_chunks(200, 16, 3, seed=5))
    assert not np.array_equal(chunks, synthetic_chunks(200, 16, 3, seed=6))
    # a minimum-jerk move of >= 4 steps across at most 2 units changes its velocity by <= ~0.6 per step
    assert np.abs(np.diff(chunks, n=2, axis=1)).max() < 0.7
    assert chunks.std() > 0.2  # they do move
    with pytest.raises(ValueError, match="min_segment=5, max_segment=4"):
        synthetic_chunks(1, 8, 2, min_segment=5, max_segment=4)


def test_registered_and_parsed_by_name():
    assert isinstance(build_tokenizer("vq"), VQTokenizer)
    config = VQTokenizerConfig(levels=3, codebook_size=100)
    assert (config.max_vocab_size, config.fixed_length) == (300, True)
    assert config.latent_steps(8) == 2 and config.latent_steps(10) == 3 and VQTokenizerConfig(downsample=5) \
        .latent_steps(5) == 1
    with pytest.raises(ValueError, match="codebook_size must be >= 2; got 1"):
        VQTokenizerConfig(codebook_size=1)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        VQTokenizerConfig(ema_decay=1.0)


def test_reconstruction_falls_and_held_out_error_is_bounded(data, fitted):
    _, test = data
    history = [h["recon_mse"] for h in fitted.fit_report["history"]]
    assert [h["step"] for h in fitted.fit_report["history"]] == [50, 100, 150, 200]
    assert history[-1] < history[0] / 5  # measured mse 0.097 -> 0.0058
    report = fitted.round_trip_error(test)
    # held-out mean 0.054, max 0.59 (8 ids for 32 values in [-1, 1]); FAST's test bound is 0.03 with ~12 ids
    assert report["mean_abs_error"] < 0.08
    assert report["tokens_per_chunk"] == report["max_tokens_per_chunk"] == fitted.max_tokens_per_chunk == 8
    # the mean chunk (no information) errs 0.44, 8x more
    assert report["mean_abs_error"] < np.abs(test - test.mean(0)).mean() / 5


def test_codebooks_are_used(data, fitted):
    _, test = data
    stats = fitted.diagnostics(test)
    # held-out usage 1.0 at every level and perplexity 28.6-30.7 of 32 codes
    assert len(stats["codebook_usage"]) == len(stats["perplexity"]) == SMALL.levels
    assert min(stats["codebook_usage"]) > 0.8
    assert min(stats["perplexity"]) > 0.6 * SMALL.codebook_size
    assert fitted.fit_report["codebook_usage"] == pytest.approx(fitted.diagnostics(data[0])["codebook_usage"])


def test_ids_are_step_major_and_offset_per_level(data, fitted):
    _, test = data
    tokens = np.array(fitted.encode(test))  # (N, T' * L)
    codes = fitted.codes(test)  # (N, T', L)
    assert tokens.shape == (len(test), 8) and codes.shape == (len(test), 2, 4)
    np.testing.assert_array_equal(tokens.reshape(len(test), 2, 4), codes + np.array([0, 32, 64, 96]))
    level = np.arange(8) % SMALL.levels  # position p holds level p % L
    assert np.all(tokens >= level * 32) and np.all(tokens < (level + 1) * 32)
    assert fitted.vocab_size == 128


def _dead_codes_after_restart_training(data, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Train 40 steps, make half of level 0's codes dead (moved far from every encoder output), train 60 more:
    (the share of the poisoned codes used afterwards, their codebook vectors)."""
    train, _ = data
    config = dataclasses.replace(SMALL, levels=1, dead_code_threshold=threshold, steps=40)
    torch.manual_seed(0)
    model = ConvRVQ(config, H, D, batch_vectors=config.batch_size * 2)
    chunks, generator = torch.from_numpy(train).float(), torch.Generator().manual_seed(0)
    train_autoencoder(model, chunks, config, generator)
    codebook = model.quantizer.layers[0]._codebook  # the library's EMA state (pinned version)
    dead = torch.arange(16, 32)
    with torch.no_grad():
        codebook.embed[0, dead] = 100.0
        codebook.embed_avg[0, dead] = 100.0 * codebook.cluster_size[0, dead, None]
        _, codes, _ = model(chunks)  # eval mode: no update
    assert not np.isin(codes.numpy(), dead.numpy()).any()  # they are dead now
    train_autoencoder(model, chunks, dataclasses.replace(config, steps=60), generator)
    with torch.no_grad():
        _, codes, _ = model(chunks)
    used = np.isin(dead.numpy(), codes.numpy()).mean()
    return used, codebook.embed[0, dead].detach().numpy()


def test_dead_codes_are_restarted_at_encoder_outputs_and_reused(data):
    used, vectors = _dead_codes_after_restart_training(data, threshold=0.1)
    assert used > 0.8  # measured 1.0: every poisoned code was restarted and is used again
    assert np.abs(vectors).max() < 10  # back among the encoder outputs (measured max |value| 0.92)
    # without restarts the same poisoned codes stay dead (their EMA vectors only decay towards 0)
    used_without, _ = _dead_codes_after_restart_training(data, threshold=0.0)
    assert used_without == 0


def test_encoder_and_decoder_are_causal():
    config = dataclasses.replace(SMALL, downsample=2)  # H=8 -> 4 latent steps
    torch.manual_seed(0)
    model = ConvRVQ(config, H, D, batch_vectors=64).eval()
    x = torch.randn(3, H, D)
    later = x.clone()
    later[:, 5:] += 1.0  # change steps 5..7 (latent steps 2 and 3)
    with torch.no_grad():
        z, z_later = model.encode(x), model.encode(later)
        assert torch.equal(z[:, :2], z_later[:, :2]) and not torch.allclose(z[:, 2:], z_later[:, 2:])
        z_later = z.clone()
        z_later[:, 3] += 1.0  # latent step 3 -> action steps 6, 7
        out, out_later = model.decode(z), model.decode(z_later)
    assert torch.equal(out[:, :6], out_later[:, :6]) and not torch.allclose(out[:, 6:], out_later[:, 6:])


def test_horizon_not_a_multiple_of_the_downsampling_is_padded(data):
    train, _ = data
    tok = build_tokenizer(dataclasses.replace(SMALL, steps=5)).fit(train[:200, :6])  # H=6 -> 2 latent steps
    assert tok.latent_steps == 2 and len(tok.encode(train[:1, :6])[0]) == 8
    assert tok.decode(tok.encode(train[:3, :6])).shape == (3, 6, D)


def test_save_load_gives_identical_tokens_and_actions(data, fitted, tmp_path):
    _, test = data
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    back = ActionTokenizer.load(tmp_path, embodiment="sawyer")
    assert type(back) is VQTokenizer and back.config == fitted.config
    assert back.fit_report == json.loads(json.dumps(fitted.fit_report))
    tokens = fitted.encode(test)
    assert back.encode(test) == tokens
    np.testing.assert_array_equal(back.decode(tokens), fitted.decode(tokens))
    with pytest.raises(ValueError, match="fit on 'sawyer', not 'so101'"):
        ActionTokenizer.load(tmp_path, embodiment="so101")


def test_load_refuses_missing_or_mismatched_weights(fitted, tmp_path):
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["config"]["hidden"] = 48
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE} does not fit a vq tokenizer with this config"):
        ActionTokenizer.load(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        ActionTokenizer.load(tmp_path)


def test_wrong_width_or_horizon_names_expected_and_got(fitted):
    with pytest.raises(ValueError, match=rf"fit for action dim D={D}; got chunks of shape .*\(D={D + 1}\)"):
        fitted.encode(np.zeros((2, H, D + 1)))
    with pytest.raises(ValueError, match=rf"fit for horizon H={H}; got chunks of shape .*\(H={H - 2}\)"):
        fitted.encode(np.zeros((2, H - 2, D)))
    with pytest.raises(ValueError, match=rf"fit for horizon H={H}"):
        fitted.diagnostics(np.zeros((2, H + 1, D)))
    with pytest.raises(RuntimeError, match=r"call fit\(chunks\) or load"):
        build_tokenizer("vq").encode(np.zeros((1, H, D)))


def test_fit_is_deterministic_under_a_seed(data):
    train, test = data
    config = dataclasses.replace(SMALL, steps=30)

    def fit(seed: int) -> VQTokenizer:
        return build_tokenizer(dataclasses.replace(config, seed=seed)).fit(train)

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = fit(0), fit(0)
    assert torch.equal(torch.rand(1), expected)  # the caller's global RNG is left as it was
    assert a.encode(test) == b.encode(test)
    for (name, wa), (_, wb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name
    assert a.fit_report == b.fit_report
    assert fit(1).encode(test) != a.encode(test)


def test_decode_of_malformed_tokens_keeps_the_shape(data, fitted):
    _, test = data
    valid = fitted.encode(test[:1])[0]
    garbage = [[], [-5, 10**9, 3], valid[:2], valid * 3, list(range(-20, 200))]
    out = fitted.decode(garbage)
    assert out.shape == (len(garbage), H, D) and out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_array_equal(fitted.decode([valid + valid]), fitted.decode([valid]))  # extra ids dropped
    # an id of another level's range names the code id % codebook_size at its position's level
    swapped = [valid[0] + 32, valid[1] - 32, *valid[2:]]
    np.testing.assert_array_equal(fitted.decode([swapped]), fitted.decode([valid]))


def test_the_default_diagnostics_are_empty(data):
    train, _ = data
    assert build_tokenizer("bins").fit(train).diagnostics(train[:5]) == {}


def test_cli_fits_on_a_lerobot_dataset_and_writes_the_report(tiny_demos_path, tiny_demo_config, tmp_path):
    from vla.tokenizers.cli import NORMALIZATION_FILE, REPORT_FILE, TOKENIZER_DIR, main

    main(["fit", "--dataset.root", str(tiny_demos_path), "--dataset.repo_id", tiny_demo_config.repo_id,
          "--tokenizer.type", "vq", "--tokenizer.levels", "2", "--tokenizer.codebook_size", "16",
          "--tokenizer.hidden", "32", "--tokenizer.code_dim", "8", "--tokenizer.steps", "60",
          "--tokenizer.batch_size", "32", "--tokenizer.log_every", "30", "--horizon", "8", "--holdout", "0.25",
          "--synthetic_chunks", "300", "--output_dir", str(tmp_path),
          "--extra_datasets", f"[{{root: {tiny_demos_path}, repo_id: {tiny_demo_config.repo_id}}}]"])
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["provenance"]["commit"] and report["provenance"]["config"]["tokenizer"]["type"] == "vq"
    assert report["provenance"]["config"]["synthetic_chunks"] == 300
    assert (report["horizon"], report["action_dim"], report["vocab_size"]) == (8, 4, 32)
    assert report["held_out_episodes"] == 1  # 25% of 4 episodes
    chunks = report["fit_chunks"]
    assert chunks["synthetic"] == 300 and chunks[f"extra:{tiny_demo_config.repo_id}"] > chunks["dataset"] > 0
    held = report["held_out"]
    assert held["tokens_per_chunk"] == 4 and len(held["codebook_usage"]) == len(held["perplexity"]) == 2
    assert 0 < held["mean_abs_error"] < 1.0 and 0 < min(held["codebook_usage"]) <= 1
    tok = ActionTokenizer.load(tmp_path / TOKENIZER_DIR, embodiment=report["embodiment"])
    assert tok.horizon == 8 and tok.action_dim == 4 and (tmp_path / NORMALIZATION_FILE).is_file()
