"""Action heads on the Qwen2.5-VL backbone (multimodal RoPE, pinned resolution): a continuous head (flow) and the
token heads (ar, hybrid) train on a fixed batch, the ar head decodes over its KV cache exactly as without, and
checkpoints give identical actions. A tiny random Qwen2.5-VL built offline; test_ar_head's batch and tokenizers.
"""

from __future__ import annotations

import pytest
import torch
from test_ar_head import INSTRUCTIONS, ar_policy, fixed_batch, identity_normalizer, observation
from test_hybrid_head import hybrid_policy, train_on

from vla.action_heads import FlowHeadConfig
from vla.backbones import BackboneConfig
from vla.backbones.tiny import build_tiny_vlm
from vla.checkpoint import load_policy
from vla.config import ModelConfig
from vla.policy import VLAPolicy

FAMILY = "qwen2_5_vl"


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    """32 px frames, 8 px patches merged 2 x 2: 4 image tokens per camera; hidden 32, 2 layers, GQA, tied head."""
    return build_tiny_vlm(FAMILY, tmp_path_factory.mktemp("qwen") / "qwen2_5_vl", INSTRUCTIONS, image_size=32,
                          patch_size=8, hidden_size=32, heads=2, vocab_size=300)


def falls(losses: list[float], window: int = 5, factor: float = 0.6) -> bool:
    return sum(losses[-window:]) / window < factor * sum(losses[:window]) / window


def test_flow_head_trains_and_round_trips(qwen_path, train_on_batch, tmp_path):
    """pi0-style flow matching reading the Qwen backbone's tokens: the loss falls on a fixed batch, and a saved
    policy (backbone rebuilt from its saved, resolution-pinned structure) samples the same chunks."""
    model = ModelConfig(backbone=BackboneConfig(FAMILY, pretrained=str(qwen_path)),
                        head=FlowHeadConfig(horizon=4, hidden=32, depth=2, heads=2, noise_samples_per_cond=2),
                        max_action_dim=4, max_state_dim=7, image_size=32, cameras=["corner"])
    torch.manual_seed(0)
    policy = VLAPolicy(model, identity_normalizer())
    losses = train_on_batch(policy, fixed_batch(), steps=40, lr=3e-3)
    assert falls(losses, window=8), losses
    policy.eval()
    obs = observation(fixed_batch())
    first = policy.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3)
    policy.save_pretrained(tmp_path / "flow")
    loaded = load_policy(tmp_path / "flow")
    assert loaded.backbone.image_size == 32 and loaded.backbone.family.mrope
    again = loaded.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3)
    assert torch.equal(again.actions, first.actions)
    assert not torch.equal(first.actions, policy.predict(obs, generator=torch.Generator().manual_seed(1),
                                                         num_steps=3).actions)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as on a GPU
        mixed = loaded.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3).actions
    assert mixed.shape == first.actions.shape and torch.isfinite(mixed).all()


def test_ar_head_trains_decodes_over_its_cache_and_round_trips(qwen_path, train_on_batch, tmp_path):
    """ar (bins) writes action tokens with Qwen's own LM head: the loss falls, KV-cached greedy decoding (suffix at
    text positions after the prefix's largest M-RoPE index) gives exactly the ids of recomputing the suffix each
    step, and save -> load gives identical actions."""
    policy = ar_policy(qwen_path, "bins", FAMILY)
    backbone = policy.backbone
    assert policy.head.action_ids[0] == backbone.text_vocab_size  # new ids after every text id
    assert backbone.lm_head.weight is backbone.vlm.get_input_embeddings().weight  # tied, as Qwen2.5-VL-3B
    losses = train_on_batch(policy, fixed_batch(), steps=30, lr=3e-3)
    assert falls(losses), losses
    policy.eval()
    batch = fixed_batch(seed=5)
    with torch.no_grad():
        cond = policy.condition(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])
        cached, cached_probs = policy.head.decode_ids(cond)
        full, full_probs = policy.head.decode_ids(cond, kv_cache=False)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_probs, full_probs)
    assert len(set(cached.flatten().tolist())) > 3  # not one repeated token
    obs = observation(fixed_batch())
    greedy = policy.predict(obs)
    policy.save_pretrained(tmp_path / "ar")
    assert torch.equal(load_policy(tmp_path / "ar").predict(obs).actions, greedy.actions)


def test_hybrid_head_trains_both_terms(qwen_path):
    """HybridVLA's diffusion span and AR tokens in Qwen's LLM: both loss terms fall on a fixed batch, and the
    collaborative ensemble returns a finite chunk."""
    policy = hybrid_policy(qwen_path, family=FAMILY)
    history = train_on(policy, fixed_batch(), steps=40)
    for term in ("diffusion_loss", "ar_loss"):
        assert falls([row[term] for row in history]), term
    chunk = policy.eval().predict(observation(fixed_batch()), generator=torch.Generator().manual_seed(0))
    assert chunk.actions.shape == (4, 4, 4) and torch.isfinite(chunk.actions).all()
    assert policy.head.ensemble_stats()["chunks"] == 4
