"""Sampling-time key/value buffers: the prefix is copied once per sampling call, each step writes only its suffix,
and the results equal those of concatenating the prefix anew at every step."""

from __future__ import annotations

import pytest
import torch
from test_dita_shared import INSTRUCTIONS, TINY, backbone_and_images
from test_heads import fake_cond, make_head

from vla.action_heads.prefix import memory_allowed
from vla.backbones.tiny import build_tiny_vlm
from vla.kv_cache import SuffixKV, buffer_reuse, buffers_reusable

FAMILIES = ["paligemma", "qwen2_5_vl"]


def kv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=g), torch.randn(batch, 2, length, 4, generator=g)


def test_suffix_kv_returns_prefix_then_suffix_and_overwrites_in_place():
    prefix_k, prefix_v = kv(3, 5, 0)
    memory = SuffixKV(prefix_k, prefix_v)
    first = kv(3, 2, 1)
    keys, values = memory.write(*first, start=0)
    assert torch.equal(keys, torch.cat([prefix_k, first[0]], 2))
    assert torch.equal(values, torch.cat([prefix_v, first[1]], 2))
    storage = memory.keys.data_ptr()
    second = kv(3, 2, 2)
    keys, values = memory.write(*second, start=0)  # the next denoising step: same slots, new tokens
    assert torch.equal(keys, torch.cat([prefix_k, second[0]], 2))
    assert torch.equal(values, torch.cat([prefix_v, second[1]], 2))
    assert memory.keys.data_ptr() == storage  # nothing reallocated, the prefix not copied again


def test_suffix_kv_grows_by_doubling_and_keeps_what_was_written():
    prefix_k, prefix_v = kv(1, 4, 0)
    memory = SuffixKV(prefix_k, prefix_v)
    tokens = [kv(1, 1, 10 + i) for i in range(9)]
    capacities = []
    for i, token in enumerate(tokens):  # a decoder appending one token per step
        keys, values = memory.write(*token, start=i)
        capacities.append(memory.keys.shape[2] - 4)
    assert torch.equal(keys, torch.cat([prefix_k] + [t[0] for t in tokens], 2))
    assert torch.equal(values, torch.cat([prefix_v] + [t[1] for t in tokens], 2))
    assert sorted(set(capacities)) == [1, 2, 4, 8, 16]  # O(log T) reallocations for T tokens


def test_buffers_are_reused_only_without_autograd():
    assert not buffers_reusable()  # grad is on in tests by default: an in-place write would break backward
    with torch.no_grad():
        assert buffers_reusable()
        with buffer_reuse(False):
            assert not buffers_reusable()
        assert buffers_reusable()


@pytest.mark.parametrize("name, overrides", [("flow", {}), ("dita", {}), ("dita", {"use_proprio": False})])
def test_head_samples_equal_with_and_without_buffer_reuse(name, overrides):
    head = make_head(name, **overrides).eval()
    cond = fake_cond()
    reused = head.sample(cond, generator=torch.Generator().manual_seed(3), num_steps=4)
    with buffer_reuse(False):
        copied = head.sample(cond, generator=torch.Generator().manual_seed(3), num_steps=4)
    torch.testing.assert_close(reused, copied, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms_kv")
    return {family: build_tiny_vlm(family, root / family, INSTRUCTIONS, **TINY) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_suffix_steps_write_one_buffer_and_equal_concatenation(tiny_dirs, family):
    """`LanguagePrefix.extend` (Dita's shared denoiser) over several steps and a `Continuation` decoding token by
    token give the same hidden states with the reused buffers as with a concatenating DynamicCache, and the steps
    write into one buffer allocated once."""
    backbone, images = backbone_and_images(tiny_dirs, family)
    with torch.no_grad():
        prefix = backbone(images, INSTRUCTIONS, keep_cache=True).past_key_values
        g, width = torch.Generator().manual_seed(0), backbone.hidden_size
        steps = [torch.randn(3, 4, width, generator=g)
                 for _ in range(3)]
        allowed = memory_allowed(prefix.token_mask.bool(), 4, causal_queries=True)
        reused, storages = [], set()
        for embeds in steps:
            reused.append(prefix.extend(embeds, allowed))
            storages.add(prefix.scratch_continuation().cache.suffix[0].keys.data_ptr())
        with buffer_reuse(False):
            copied = [prefix.extend(embeds, allowed) for embeds in steps]
        tokens = [torch.randn(3, 1, width, generator=g) for _ in range(6)]
        continuation = prefix.continuation()
        decoded = [continuation.append(t) for t in tokens]
        with buffer_reuse(False):
            reference = prefix.continuation()
            expected = [reference.append(t) for t in tokens]
    assert len(storages) == 1
    for a, b in zip(reused, copied, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(decoded, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
