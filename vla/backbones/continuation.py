"""Running more tokens through the backbone's language model after its cached observation prefix.

A head that denoises inside the VLM (Dita with `denoiser: shared`) embeds its tokens to the LLM's
width and runs them through the LLM's own layers, attending to the observation (image +
instruction + cognition tokens) through the keys/values cached when the backbone encoded it. The
prefix is encoded once per observation; each denoising step runs only the few suffix tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vla.types import KV, additive_mask, repeat_kv


@dataclass
class LanguagePrefix:
    """The backbone LLM's per-layer keys/values of an encoded prefix, and how to continue after it.

    keys_values: one (keys, values) pair per LLM layer, [B, kv_heads, L, head_dim].
    token_mask: bool [B, L]; True at real prefix tokens (right padding is never attended to).
    next_position: long [B]; position id of the first token after each sample's prefix.
    language_model: the HF decoder stack (base model, no LM head) that produced the cache.
    input_scale: multiplies the suffix embeddings. Gemma multiplies every input embedding by
        sqrt(hidden) (its token table is stored that much smaller, and PaliGemma divides its image
        features by it), so for Gemma this is 1 / sqrt(hidden) and a unit-scale head token enters the
        LLM at the scale of the prefix tokens; 1 for LLMs that do not rescale.
    dtype: the dtype of the prefix embeddings; the suffix is cast to it.
    """

    keys_values: list[KV]
    token_mask: Tensor
    next_position: Tensor
    language_model: nn.Module
    input_scale: float = 1.0
    dtype: torch.dtype = torch.float32

    def repeat_interleave(self, repeats: int) -> LanguagePrefix:
        """Each sample repeated `repeats` times in a row (one per noise draw)."""
        if repeats == 1:
            return self
        return dataclasses.replace(self, keys_values=repeat_kv(self.keys_values, repeats),
                                   token_mask=self.token_mask.repeat_interleave(repeats, 0),
                                   next_position=self.next_position.repeat_interleave(repeats, 0))

    def extend(self, embeds: Tensor, allowed: Tensor) -> Tensor:
        """Last-layer hidden states [B, T, C] of tokens `embeds` [B, T, C] placed right after the prefix.

        allowed: bool [B, 1, T, L + T]; True where a suffix token may attend to a key (prefix, then suffix).
        The cached prefix is not modified, so one prefix serves every denoising step.
        """
        batch, length = embeds.shape[:2]
        expected = (batch, 1, length, self.token_mask.shape[1] + length)
        if tuple(allowed.shape) != expected:
            raise ValueError(f"suffix attention mask must be {list(expected)}; got {list(allowed.shape)}")
        embeds = (embeds * self.input_scale).to(self.dtype)
        positions = self.next_position[:, None] + torch.arange(length, device=embeds.device)
        # A fresh cache per call: DynamicCache.update concatenates into new tensors, so the prefix's stay intact.
        cache = DynamicCache(ddp_cache_data=self.keys_values)
        return self.language_model(inputs_embeds=embeds, attention_mask=additive_mask(allowed, self.dtype),
                                   past_key_values=cache, position_ids=positions, use_cache=True).last_hidden_state
