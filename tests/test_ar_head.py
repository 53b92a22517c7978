"""The ar head: action tokens in the backbone LLM's vocabulary, teacher forcing, KV-cached decoding, checkpoints.

Tiny random VLMs of the real HF classes (PaliGemma from conftest; SmolVLM built here), tokenizers fit on
smooth synthetic chunks; one test trains through `vla.training.train` on the tiny Meta-World demos.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import numpy as np
import pytest
import torch
from test_tokenizers import smooth_chunks

from vla.action_heads import ARHeadConfig
from vla.backbones import BackboneConfig, VLMBackbone
from vla.backbones.tiny import build_tiny_vlm
from vla.checkpoint import TOKENIZER_DIR, load_policy
from vla.config import ModelConfig
from vla.data.normalize import Normalizer
from vla.data.transforms import normalize_batch
from vla.kv_cache import buffer_reuse
from vla.policy import VLAPolicy
from vla.sim import get_task
from vla.tokenizers import BinsTokenizerConfig, FastTokenizerConfig, VQTokenizerConfig, build_tokenizer
from vla.tokenizers.base import META_FILE
from vla.tokenizers.cli import TokenizerFitConfig
from vla.tokenizers.cli import fit_tokenizer as vla_tokenizer_fit
from vla.tokenizers.vq import WEIGHTS_FILE
from vla.training.tokenizer_fit import FIT_REPORT
from vla.training.train import load_demos, train
from vla.types import Observation

H, D, S, B = 4, 4, 7, 4
EMBODIMENT = "sim"
INSTRUCTIONS = [get_task(t).instruction for t in ("reach", "button-press-topdown")]  # the conftest VLM's corpus
TOKENIZERS = ["bins", "fast", "vq"]
# vq sized for a test: 2 latent steps x 2 levels = 4 ids per chunk from 2 x 32 codes, fit in about a second
SMALL_VQ = VQTokenizerConfig(levels=2, codebook_size=32, downsample=2, hidden=16, code_dim=8, steps=60, batch_size=64)
TOKENIZER_CONFIGS = {"bins": BinsTokenizerConfig(), "fast": FastTokenizerConfig(), "vq": SMALL_VQ}


def identity_normalizer() -> Normalizer:
    """Quantile statistics with q01 = -1 and q99 = 1 in every dim: robot units are the normalised units."""
    def stats(dim):
        return {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim,
                "q01": [-1.0] * dim, "q99": [1.0] * dim}
    return Normalizer({EMBODIMENT: {"action": stats(D), "state": stats(S)}}, "quantile", D, S)


def model_config(vlm_path, tokenizer: str = "bins", family: str = "paligemma", **head) -> ModelConfig:
    config = TOKENIZER_CONFIGS[tokenizer]
    return ModelConfig(backbone=BackboneConfig(family, pretrained=str(vlm_path)),
                       head=ARHeadConfig(horizon=H, tokenizer=config, **head), max_action_dim=D, max_state_dim=S,
                       image_size=32, cameras=["corner"])


@functools.cache
def fitted_tokenizer(tokenizer: str = "bins", embodiment: str = EMBODIMENT):
    return build_tokenizer(TOKENIZER_CONFIGS[tokenizer]).fit(smooth_chunks(400, H, D, seed=0), embodiment=embodiment)


def ar_policy(vlm_path, tokenizer: str = "bins", family: str = "paligemma", seed: int = 0, **head) -> VLAPolicy:
    torch.manual_seed(seed)
    policy = VLAPolicy(model_config(vlm_path, tokenizer, family, **head), identity_normalizer())
    policy.head.set_action_tokenizer(fitted_tokenizer(tokenizer))
    return policy


def fixed_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (B, 1, 32, 32, 3), generator=g, dtype=torch.uint8),
            "state": torch.rand(B, S, generator=g) * 2 - 1,
            "actions": torch.tensor(smooth_chunks(B, H, D, seed=seed + 1), dtype=torch.float32),
            "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
            "instruction": [INSTRUCTIONS[i % 2] for i in range(B)], "embodiment": [EMBODIMENT] * B}


def observation(batch: dict) -> Observation:
    return Observation(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])


@pytest.fixture(scope="module")
def vlms(tiny_vlm_path, tmp_path_factory) -> dict:
    """The conftest's tiny PaliGemma (tied LM head) and a tiny SmolVLM (untied LM head, llama)."""
    smolvlm = build_tiny_vlm("smolvlm", tmp_path_factory.mktemp("ar_vlm") / "smolvlm", INSTRUCTIONS, image_size=32,
                             patch_size=8, hidden_size=32, heads=2, vocab_size=300)
    return {"paligemma": tiny_vlm_path, "smolvlm": smolvlm}


@pytest.fixture(scope="module")
def trained(vlms, train_on_batch):
    """get(family, tokenizer) -> (policy trained 30 steps on `fixed_batch()`, its losses), trained once per module.

    Untrained, a tiny LLM with tied embeddings only repeats its last token (its own row dominates the hidden
    state); trained, it decodes the varied sequences of the batch, which makes the decoding tests meaningful."""
    cache = {}

    def get(family: str, tokenizer: str):
        if (family, tokenizer) not in cache:
            policy = ar_policy(vlms[family], tokenizer, family)
            losses = train_on_batch(policy, fixed_batch(), steps=30, lr=3e-3)
            cache[family, tokenizer] = policy.eval(), losses
        return cache[family, tokenizer]

    return get


# ---- vocabulary ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["paligemma", "smolvlm"])
def test_new_action_tokens_never_collide_with_text_tokens(vlms, family):
    torch.manual_seed(0)
    plain = VLMBackbone(BackboneConfig(family, pretrained=str(vlms[family])), lm_head=True)
    text_table = plain.vlm.get_input_embeddings().weight.detach().clone()
    text_head = plain.lm_head.weight.detach().clone()
    policy = ar_policy(vlms[family], "fast", family)
    backbone, ids = policy.backbone, policy.head.action_ids
    text_vocab = backbone.text_vocab_size
    assert text_vocab == text_table.shape[0] >= len(backbone.processor.tokenizer)
    assert len(ids) == 1024 + 1  # FAST's vocabulary bound + END
    assert ids.tolist() == list(range(text_vocab, text_vocab + 1025))  # all after every text id
    every_text_id = set(backbone.reserved_token_ids())
    for text in INSTRUCTIONS + ["an instruction never seen <bos> <eos> <image>"]:
        every_text_id |= set(backbone.processor.tokenizer(text)["input_ids"])
    assert max(every_text_id) < text_vocab
    # the text rows are untouched; the LM head grew with the table (tied for PaliGemma, separately for SmolVLM)
    table = backbone.vlm.get_input_embeddings().weight
    assert table.shape[0] == backbone.lm_head.weight.shape[0] == text_vocab + 1025
    assert torch.equal(table[:text_vocab], text_table)
    assert torch.equal(backbone.lm_head.weight[:text_vocab], text_head)
    assert (backbone.lm_head.weight is table) == (family == "paligemma")
    assert not torch.equal(table[ids[0]], table[ids[1]])  # distinct new tokens


def test_reused_text_tokens_are_the_last_ids_and_a_small_vocabulary_is_refused(vlms):
    policy = ar_policy(vlms["paligemma"], "bins", vocabulary="reuse")
    text_vocab = policy.backbone.text_vocab_size
    assert policy.backbone.vlm.get_input_embeddings().weight.shape[0] == text_vocab  # nothing added
    assert policy.head.action_ids.tolist() == list(range(text_vocab - 256, text_vocab))
    assert not set(policy.head.action_ids.tolist()) & set(policy.backbone.reserved_token_ids())
    # SmolVLM's tiny vocabulary (300 ids) cannot give up FAST's 1025 action tokens: the error names the numbers
    with pytest.raises(ValueError, match=r"cannot reuse 1025 text tokens .* has 3\d\d ids"):
        ar_policy(vlms["smolvlm"], "fast", "smolvlm", vocabulary="reuse")


def test_head_config_errors_name_the_problem(vlms):
    with pytest.raises(ValueError, match="head.vocabulary must be one of"):
        ARHeadConfig(vocabulary="shared")
    with pytest.raises(ValueError, match="head.temperature must be >= 0"):
        ARHeadConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="freeze_language=false"):
        dataclasses.replace(model_config(vlms["paligemma"]),
                            backbone=BackboneConfig("paligemma", pretrained="x", freeze_language=True))
    policy = VLAPolicy(model_config(vlms["paligemma"]), identity_normalizer())
    with pytest.raises(RuntimeError, match="no fitted action tokenizer"):
        policy(normalize_batch(policy.normalizer, fixed_batch()))
    with pytest.raises(ValueError, match="fit for chunks of H=8"):
        policy.head.set_action_tokenizer(build_tokenizer("bins").fit(smooth_chunks(50, 8, D, seed=0)))
    with pytest.raises(ValueError, match="configured for a bins tokenizer of at most 256 ids.*got a fast tokenizer"):
        policy.head.set_action_tokenizer(fitted_tokenizer("fast"))
    small = build_tokenizer(BinsTokenizerConfig(n_bins=64)).fit(smooth_chunks(50, H, D, 0))
    with pytest.raises(ValueError, match="at most 256 ids.*got a bins tokenizer of at most 64 ids"):
        policy.head.set_action_tokenizer(small)
    # fit settings that do not change the vocabulary may differ (e.g. the quantiles of the range)
    policy.head.set_action_tokenizer(build_tokenizer(BinsTokenizerConfig(low_quantile=0.05)).fit(
        smooth_chunks(50, H, D, 0), embodiment=EMBODIMENT))


# ---- decoding ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, tokenizer", [("paligemma", "bins"), ("paligemma", "fast"), ("paligemma", "vq"),
                                               ("smolvlm", "fast")])
def test_kv_cached_decoding_equals_full_recompute(trained, family, tokenizer):
    """Greedy decoding over the persistent cache gives exactly the ids (and chunks) of recomputing the whole suffix
    at every step, and teacher forcing those ids in one pass gives the same logits."""
    policy, _ = trained(family, tokenizer)
    batch = fixed_batch(seed=5)  # other observations than the training batch
    with torch.no_grad():
        cond = policy.condition(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])
        cached, cached_probs = policy.head.decode_ids(cond)
        full, full_probs = policy.head.decode_ids(cond, kv_cache=False)
        with buffer_reuse(False):  # keys concatenated at every token instead of written into one buffer
            copied, copied_probs = policy.head.decode_ids(cond)
        assert torch.equal(cached, full) and torch.equal(cached, copied)
        torch.testing.assert_close(cached_probs, full_probs)
        torch.testing.assert_close(cached_probs, copied_probs)
        assert torch.equal(policy.head.ids_to_chunks(cached), policy.head.ids_to_chunks(full))
        assert len(set(cached.flatten().tolist())) > 3 and len(set(map(tuple, cached.tolist()))) > 1  # not trivial
        # teacher forcing: the greedy token is the argmax of the one-pass logits at every position up to END
        forced = policy.head.logits(cond, cached).argmax(-1)
    positions = torch.arange(cached.shape[1])
    if policy.head.end_id is None:  # bins, vq: exactly max_tokens_per_chunk ids (H * D; T' * levels)
        assert cached.shape == (B, policy.head.action_tokenizer.max_tokens_per_chunk)
        decoded = torch.ones_like(cached, dtype=torch.bool)
    else:  # fast: up to the first END (after it the row only repeats END)
        is_end = cached == policy.head.end_id
        first_end = torch.where(is_end.any(1), is_end.float().argmax(1), torch.tensor(cached.shape[1]))
        decoded = positions[None] <= first_end[:, None]
    assert torch.equal(forced[decoded], cached[decoded])


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_decoding_yields_only_valid_action_tokens(vlms, tokenizer):
    """Even when text tokens and unfitted action slots have the highest logits, only fitted action ids (and END)
    come out."""
    policy = ar_policy(vlms["paligemma"], tokenizer).eval()
    head, weight = policy.head, policy.backbone.lm_head.weight
    vocab = head.action_tokenizer.vocab_size
    cond = policy.condition(*(fixed_batch()[k] for k in ("images", "state", "instruction", "embodiment")))
    with torch.no_grad():
        unfitted = head.action_ids[vocab:head.end_id] if head.end_id is not None else head.action_ids[:0]
        # the state token's hidden state is the first query: tilt every text / unfitted row towards it
        _, first = head.start(cond)
        direction = first.mean(0) / first.mean(0).norm()
        for rows in (slice(0, policy.backbone.text_vocab_size), unfitted):
            weight[rows] += 50 * direction
        full_vocab_choice = (first @ weight.T).argmax(-1)
        assert not torch.isin(full_vocab_choice, head.action_ids[:vocab]).any()  # unconstrained, no action token
        for temperature in (0.0, 1.0):
            ids, probs = head.decode_ids(cond, torch.Generator().manual_seed(0), temperature)
            allowed = torch.arange(vocab).tolist() + ([head.end_id] if head.end_id is not None else [])
            assert set(ids.flatten().tolist()) <= set(allowed)
            assert ((probs > 0) & (probs <= 1)).all()
    chunk = head.sample(cond)
    assert chunk.shape == (B, H, D) and chunk.abs().max() <= 1.0


def test_sampling_is_seeded_and_n_samples_come_together(vlms):
    policy = ar_policy(vlms["paligemma"], "bins").eval()  # untrained: a flat distribution, draws differ
    cond = policy.condition(*(fixed_batch()[k] for k in ("images", "state", "instruction", "embodiment")))
    a = policy.head.sample(cond, generator=torch.Generator().manual_seed(1), temperature=1.0)
    b = policy.head.sample(cond, generator=torch.Generator().manual_seed(1), temperature=1.0)
    c = policy.head.sample(cond, generator=torch.Generator().manual_seed(2), temperature=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    draws = policy.head.sample_n(cond, 3, generator=torch.Generator().manual_seed(0), temperature=1.0)
    greedy = policy.head.sample_n(cond, 3)
    assert draws.shape == greedy.shape == (B, 3, H, D)
    assert not torch.equal(draws[:, 0], draws[:, 1])
    assert torch.equal(greedy[:, 0], greedy[:, 2]) and torch.equal(greedy[:, 0], policy.head.sample(cond))
    with pytest.raises(ValueError, match="BAC"):
        policy.head.sample(cond, bac=True)
    with pytest.raises(ValueError, match="real-time chunking"):
        policy.head.sample(cond, prefix=torch.zeros(B, 2, D))
    assert policy.sampling_settings(num_steps=10)["num_inference_steps"] is None  # no denoising steps


# ---- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_loss_falls_on_fixed_batch(trained, tokenizer):
    policy, losses = trained("paligemma", tokenizer)
    ids = policy.head.action_tokenizer.vocab_size + (tokenizer == "fast")  # + END
    assert losses[0] == pytest.approx(np.log(ids), rel=0.05)  # new tokens start alike: about uniform over the ids
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    with torch.no_grad():
        assert policy(normalize_batch(policy.normalizer, fixed_batch()))["token_accuracy"] > 0.5


def test_padded_steps_and_dims_do_not_reach_the_loss(vlms):
    policy = ar_policy(vlms["paligemma"], "fast")
    batch = fixed_batch()
    batch["action_is_pad"][:, -2:] = True
    cond = policy.condition(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])
    valid = (~batch["action_is_pad"])[:, :, None].expand(B, H, D)
    garbage = batch["actions"].clone()
    garbage[:, -2:] = 5.0
    with torch.no_grad():
        clean = policy.head.loss(cond, batch["actions"], valid)["loss"]
        dirty = policy.head.loss(cond, garbage, valid)["loss"]
    assert torch.equal(clean, dirty)
    with pytest.raises(ValueError, match="fit on 4 action dims"):
        policy.head.loss(cond, batch["actions"], valid & torch.tensor([True, True, True, False]))


# ---- checkpoints ---------------------------------------------------------------------------------------------


def test_save_load_gives_identical_actions(trained, tmp_path):
    policy, _ = trained("paligemma", "bins")
    obs = observation(fixed_batch())
    greedy = policy.predict(obs)
    sampled = policy.predict(obs, generator=torch.Generator().manual_seed(0), temperature=1.0)
    policy.save_pretrained(tmp_path / "ar")
    assert (tmp_path / "ar" / TOKENIZER_DIR / META_FILE).is_file()
    assert json.loads((tmp_path / "ar" / "meta.json").read_text())["action_tokenizer"]["type"] == "bins"
    loaded = load_policy(tmp_path / "ar")
    assert torch.equal(loaded.predict(obs).actions, greedy.actions)
    assert torch.equal(loaded.predict(obs, generator=torch.Generator().manual_seed(0), temperature=1.0).actions,
                       sampled.actions)
    assert not torch.equal(greedy.actions, sampled.actions)
    ids = loaded.head.action_ids
    assert torch.equal(loaded.backbone.lm_head.weight[ids], policy.backbone.lm_head.weight[ids])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as on a GPU
        mixed = loaded.predict(obs).actions
    assert mixed.shape == greedy.actions.shape and torch.isfinite(mixed).all()


def test_checkpoint_without_tokenizer_or_with_a_foreign_one_is_refused(vlms, tmp_path):
    policy = ar_policy(vlms["paligemma"], "bins")
    policy.save_pretrained(tmp_path / "good")
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "good", missing)
    shutil.rmtree(missing / TOKENIZER_DIR)
    with pytest.raises(FileNotFoundError, match="no action_tokenizer/ folder"):
        load_policy(missing)
    foreign = tmp_path / "foreign"
    shutil.copytree(tmp_path / "good", foreign)
    meta = json.loads((foreign / TOKENIZER_DIR / META_FILE).read_text())
    (foreign / TOKENIZER_DIR / META_FILE).write_text(json.dumps(meta | {"embodiment": "ur5e"}))
    with pytest.raises(ValueError, match="fit on embodiment 'ur5e'.*trained on \\['sim'\\]"):
        load_policy(foreign)
    untrained = VLAPolicy(model_config(vlms["paligemma"]), identity_normalizer())
    with pytest.raises(ValueError, match="no fitted action tokenizer to save"):
        untrained.save_pretrained(tmp_path / "untrained")
    assert not (tmp_path / "untrained").exists()
    # a tokenizer fit on another embodiment's chunks: refused for that embodiment's observations
    policy.head.set_action_tokenizer(fitted_tokenizer("bins", embodiment="ur5e"))
    with pytest.raises(ValueError, match="fit on 'ur5e', not 'sim'"):
        policy.predict(observation(fixed_batch()))


def test_training_fits_the_tokenizer_and_the_checkpoint_round_trips(tiny_run_config, tmp_path):
    """vla-train with `--model.head.type ar --model.head.tokenizer.type fast`: the tokenizer is fit before the first
    step with a held-out round trip, saved beside the run and in the checkpoint, and loaded with it."""
    head = ARHeadConfig(horizon=tiny_run_config.model.head.horizon, tokenizer=FastTokenizerConfig())
    model = dataclasses.replace(tiny_run_config.model, head=head)
    out = tmp_path / "train"
    cfg = dataclasses.replace(tiny_run_config, model=model,
                              train=dataclasses.replace(tiny_run_config.train, steps=3, save_every=3,
                                                        output_dir=str(out)))
    checkpoint = train(cfg)
    report = json.loads((out / FIT_REPORT).read_text())
    demos = load_demos(model, tiny_run_config.data)
    assert report["type"] == "fast" and report["embodiment"] == demos.embodiment
    assert report["provenance"]["commit"] and report["provenance"]["config"]["tokenizer"]["type"] == "fast"
    assert report["held_out_episodes"] == 1 and report["fit_chunks"] + report["held_out_chunks"] == len(demos)
    assert 0 <= report["round_trip"]["mean_abs_error"] < 0.1  # FAST at scale 10 on smooth scripted actions
    assert (checkpoint / TOKENIZER_DIR / "fast_bpe.json").is_file()
    policy = load_policy(checkpoint)
    assert policy.head.action_tokenizer.embodiment == demos.embodiment
    idx = torch.tensor([0, 5])
    obs = Observation(images=demos.images[idx], state=demos.state[idx], instruction=demos.instructions(idx),
                      embodiment=[demos.embodiment] * 2)
    first = policy.predict(obs)
    policy.save_pretrained(tmp_path / "copy")
    assert torch.equal(VLAPolicy.from_pretrained(tmp_path / "copy").predict(obs).actions, first.actions)
    assert first.actions.shape == (2, head.horizon, demos.actions.shape[-1])


def test_training_loads_a_tokenizer_fit_by_vla_tokenizer(tiny_run_config, tmp_path):
    """head.tokenizer_path: a vq tokenizer fit beforehand by `vla-tokenizer fit` (with other fit settings than the
    head config's) is loaded instead of fitting one and saved with the checkpoint; one fit on other statistics is
    refused."""
    prefit = tmp_path / "tokenizer"
    vla_tokenizer_fit(TokenizerFitConfig(dataset=tiny_run_config.data, tokenizer=SMALL_VQ, horizon=H,
                                         output_dir=str(prefit)))
    head = ARHeadConfig(horizon=H, tokenizer=dataclasses.replace(SMALL_VQ, steps=1), tokenizer_path=str(prefit))
    model = dataclasses.replace(tiny_run_config.model, head=head)
    out = tmp_path / "train"
    cfg = dataclasses.replace(tiny_run_config, model=model, train=dataclasses.replace(
        tiny_run_config.train, steps=2, save_every=2, output_dir=str(out)))
    checkpoint = train(cfg)
    report = json.loads((out / FIT_REPORT).read_text())
    assert report["source"] == f"loaded from {prefit}" and report["config"]["steps"] == SMALL_VQ.steps
    assert {"codebook_usage", "perplexity"} <= set(report["round_trip"])  # the vq tokenizer's own diagnostics
    saved, original = (folder / TOKENIZER_DIR / WEIGHTS_FILE for folder in (checkpoint, prefit))
    assert saved.read_bytes() == original.read_bytes()
    assert load_policy(checkpoint).head.action_tokenizer.config == SMALL_VQ

    zscore = dataclasses.replace(cfg, model=dataclasses.replace(model, normalization="zscore"),
                                 train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "zscore")))
    with pytest.raises(ValueError, match="normalised with .*normalization.json"):
        train(zscore)
