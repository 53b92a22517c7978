"""Dita with `denoiser: shared`: the backbone's own LLM denoises, continuing after its cached prefix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from round_trip import train_and_round_trip

from vla.action_heads import DitaHeadConfig
from vla.action_heads.bac import calibrate_head
from vla.action_heads.prefix import memory_allowed
from vla.backbones import BackboneConfig, VLMBackbone
from vla.backbones.tiny import build_tiny_vlm
from vla.data.normalize import Normalizer
from vla.policy import VLAPolicy
from vla.training.train import load_demos
from vla.types import Observation

FAMILIES = ["paligemma", "smolvlm", "qwen2_5_vl"]
INSTRUCTIONS = ["push the puck", "open the drawer", "pick up the red block and put it in the bowl"]
TINY = dict(image_size=32, patch_size=8, hidden_size=64, vision_layers=1, text_layers=2, heads=2, vocab_size=400)
SUFFIX = 5


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlms_shared")
    return {family: build_tiny_vlm(family, root / family, INSTRUCTIONS, **TINY) for family in FAMILIES}


def backbone_and_images(tiny_dirs, family):
    torch.manual_seed(0)
    backbone = VLMBackbone(BackboneConfig(family, pretrained=str(tiny_dirs[family]))).eval()
    images = torch.randint(0, 256, (3, 1, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return backbone, images


@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_after_cached_prefix_equals_one_full_pass(tiny_dirs, family):
    """extend() over the cached prefix == one LLM pass over [prefix | suffix] with the same attention rules,
    for right-padded instructions of different lengths; so does a Continuation appended in two parts.
    Qwen2.5-VL's prefix has 3-D M-RoPE positions; the suffix's are text positions after the prefix's largest."""
    backbone, images = backbone_and_images(tiny_dirs, family)
    with torch.no_grad():
        inputs = backbone.llm_inputs(images, INSTRUCTIONS)
        prefix = backbone(images, INSTRUCTIONS, keep_cache=True).past_key_values
        suffix = torch.randn(3, SUFFIX, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.1
        allowed = memory_allowed(prefix.token_mask, SUFFIX, causal_queries=True)
        got = prefix.extend(suffix, allowed)
        assert torch.equal(got, prefix.extend(suffix, allowed))  # the cached prefix is left intact
        continuation = prefix.continuation()
        appended = torch.cat([continuation.append(part * prefix.input_scale) for part in suffix.split([2, 3], 1)], 1)

        lowest = torch.finfo(suffix.dtype).min
        top = F.pad(inputs.attention_mask, (0, SUFFIX), value=lowest)  # prefix rows never see the suffix
        bottom = torch.zeros(allowed.shape).masked_fill(~allowed, lowest)
        positions = torch.cat([inputs.position_ids, prefix.suffix_positions(0, SUFFIX)], dim=-1)  # [(3,) B, L + T]
        full = backbone.language_model(inputs_embeds=torch.cat([inputs.embeds, suffix * prefix.input_scale], dim=1),
                                       attention_mask=torch.cat([top, bottom], dim=2),
                                       position_ids=positions).last_hidden_state
    torch.testing.assert_close(got, full[:, -SUFFIX:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(appended, full[:, -SUFFIX:], atol=1e-5, rtol=1e-4)
    # Gemma multiplies input embeddings by sqrt(hidden): the head's tokens are scaled down by as much (as pi0 does)
    assert prefix.input_scale == pytest.approx(backbone.hidden_size ** -0.5 if family == "paligemma" else 1.0)
    if family == "qwen2_5_vl":  # an image's R x R tokens take R text positions: the suffix starts after the largest
        real = inputs.position_ids.amax(0).masked_fill(~prefix.token_mask, -1)
        assert prefix.next_position.tolist() == (real.amax(1) + 1).tolist()
        assert (prefix.next_position < prefix.token_mask.sum(1)).all()
        assert positions.shape == (3, 3, inputs.embeds.shape[1] + SUFFIX)
        assert (positions[:, :, -SUFFIX:] == positions[:1, :, -SUFFIX:]).all()  # text: one index on every axis
        return
    # the suffix continues right after each sample's last real token (PaliGemma counts positions from 1)
    offset = 1 if family == "paligemma" else 0
    assert prefix.next_position.tolist() == (prefix.token_mask.sum(1) + offset).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_does_not_depend_on_batch_padding(tiny_dirs, family):
    """Suffix positions continue each sample's own prefix, so a sample gives the same hidden states alone."""
    backbone, images = backbone_and_images(tiny_dirs, family)
    suffix = torch.randn(3, SUFFIX, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        batched = backbone(images, INSTRUCTIONS, keep_cache=True).past_key_values
        together = batched.extend(suffix, memory_allowed(batched.token_mask, SUFFIX, causal_queries=True))
        alone = backbone(images[:1], INSTRUCTIONS[:1], keep_cache=True).past_key_values
        single = alone.extend(suffix[:1], memory_allowed(alone.token_mask, SUFFIX, causal_queries=True))
    assert batched.token_mask[0].sum() < batched.token_mask.shape[1]  # the first instruction is the shortest
    torch.testing.assert_close(together[:1], single, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def shared_model(tiny_run_config):
    head = DitaHeadConfig(horizon=4, num_action_tokens=2, denoiser="shared", noise_samples_per_cond=2)
    return dataclasses.replace(tiny_run_config.model, head=head)


def test_shared_denoiser_trains_the_llm_and_loss_falls(tiny_run_config, shared_model, train_on_batch):
    demos = load_demos(shared_model, tiny_run_config.data)
    torch.manual_seed(0)
    policy = VLAPolicy(shared_model, Normalizer.from_demos(demos, shared_model.normalization,
                                                           shared_model.max_action_dim, shared_model.max_state_dim))
    head_params = {n for n, _ in policy.head.named_parameters()}
    assert not any(n.startswith(("prefix.", "net.blocks")) for n in head_params)  # no stack of its own
    assert policy.head.net.action_in.out_features == policy.backbone.hidden_size
    checked = []

    def gradients_reach_the_llm(step: int) -> None:
        if step == 1:  # (at step 0 the zero-initialised output layer passes no gradient back)
            layer = policy.backbone.language_model.layers[-1]
            assert layer.mlp.down_proj.weight.grad.abs().sum() > 0  # the LLM is the denoiser: it gets gradients
            # and through the cached prefix keys/values, the observation's tokens do too
            assert policy.backbone.cognition_token.grad.abs().sum() > 0
            checked.append(step)

    losses = train_on_batch(policy, demos.sample(16, torch.Generator().manual_seed(0)), steps=60,
                            after_backward=gradients_reach_the_llm)
    assert checked == [1]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_shared_denoiser_checkpoint_round_trip(tiny_run_config, shared_model, tmp_path):
    policy, _, obs, first = train_and_round_trip(tiny_run_config, shared_model, tmp_path, steps=4)
    other = policy.predict(obs, generator=torch.Generator().manual_seed(1), num_steps=3)
    assert first.actions.shape == (2, 4, 4)
    assert not torch.equal(first.actions, other.actions)
    with torch.no_grad():  # (4 steps leave the zero-initialised output layer nearly zero)
        policy.head.net.out.weight.normal_(0, 0.05)
    inverted = Observation(images=255 - obs.images, state=obs.state, instruction=obs.instruction,
                           embodiment=obs.embodiment)  # same noise and state, other pictures
    seen, unseen = (policy.predict(o, generator=torch.Generator().manual_seed(0), num_steps=3).actions
                    for o in (obs, inverted))
    assert (seen - unseen).abs().max() > 1e-3  # the chunk depends on what the LLM sees

    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as on a GPU
        mixed = policy.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3).actions
    assert mixed.shape == seen.shape and torch.isfinite(mixed).all()  # bf16 suffix meets the cached prefix

    cond = policy.condition(obs.images, obs.state, obs.instruction, obs.embodiment)
    with pytest.raises(ValueError, match="has none .*bac=False"):
        calibrate_head(policy.head, cond, num_steps=3, threshold=0.2)


def test_shared_denoiser_needs_a_trainable_language_model(shared_model):
    """Refused when the config is built, before any model is loaded."""
    frozen = dataclasses.replace(shared_model.backbone, freeze_language=True)
    with pytest.raises(ValueError, match="freeze_language=false"):
        dataclasses.replace(shared_model, backbone=frozen)
