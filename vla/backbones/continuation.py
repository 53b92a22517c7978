"""Running more tokens through the backbone's language model after its cached observation prefix.

A head that denoises inside the VLM (Dita with `denoiser: shared`) embeds its tokens to the LLM's
width and runs them through the LLM's own layers, attending to the observation (image +
instruction + cognition tokens) through the keys/values cached when the backbone encoded it. The
prefix is encoded once per observation; each denoising step runs only the few suffix tokens.

A head that writes tokens of the LLM's vocabulary (`ar`) instead opens a `Continuation`: the prefix's
keys/values plus those of every suffix token run so far, kept between calls, so autoregressive
decoding runs one token per step (each step attends to the L + t cached keys; nothing is recomputed).
It reads and writes tokens through the prefix's `Vocabulary` (the LLM's token table and LM head).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import Cache, DynamicCache

from vla.kv_cache import SuffixKV, buffers_reusable
from vla.types import KV, additive_mask, repeat_kv


@dataclass
class Vocabulary:
    """The LLM's input token table and its LM head (output embeddings), for heads that read and write tokens.

    softcap: Gemma-2 style final-logit soft-capping (logits -> softcap * tanh(logits / softcap)); None = none.
    """

    embeddings: nn.Embedding
    lm_head: nn.Linear
    softcap: float | None = None

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids [...] (global vocabulary ids) -> input embeddings [..., C], as the LLM embeds text tokens
        (unscaled table rows: an LLM that rescales its inputs, like Gemma, does so itself)."""
        return self.embeddings(ids)

    def logits(self, hidden: Tensor, ids: Tensor) -> Tensor:
        """LM-head logits [..., K] of last-layer hidden states [..., C] for the K token ids `ids` [K] only."""
        weight = self.lm_head.weight[ids]  # (K, C): the rows of the other tokens are never multiplied
        logits = hidden.to(weight.dtype) @ weight.T
        if self.lm_head.bias is not None:
            logits = logits + self.lm_head.bias[ids]
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


@dataclass
class LanguagePrefix:
    """The backbone LLM's per-layer keys/values of an encoded prefix, and how to continue after it.

    keys_values: one (keys, values) pair per LLM layer, [B, kv_heads, L, head_dim].
    token_mask: bool [B, L]; True at real prefix tokens (right padding is never attended to).
    next_position: long [B]; position id of the first token after each sample's prefix (with M-RoPE: one more than
        the prefix's largest index on any axis).
    language_model: the HF decoder stack (base model, no LM head) that produced the cache.
    input_scale: multiplies the suffix embeddings. Gemma multiplies every input embedding by
        sqrt(hidden) (its token table is stored that much smaller, and PaliGemma divides its image
        features by it), so for Gemma this is 1 / sqrt(hidden) and a unit-scale head token enters the
        LLM at the scale of the prefix tokens; 1 for LLMs that do not rescale.
    dtype: the dtype of the prefix embeddings; the suffix is cast to it.
    vocabulary: the LLM's token table and LM head, when the backbone kept its LM head (token heads).
    mrope: the LLM takes multimodal RoPE position ids [3, B, T] (temporal, height, width; Qwen2.5-VL). Suffix
        tokens are placed as text: the same index on all three axes, counting on from `next_position`.
    """

    keys_values: list[KV]
    token_mask: Tensor
    next_position: Tensor
    language_model: nn.Module
    input_scale: float = 1.0
    dtype: torch.dtype = torch.float32
    vocabulary: Vocabulary | None = None
    mrope: bool = False
    _scratch: Continuation | None = field(default=None, init=False, repr=False, compare=False)

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
        The cached prefix is not modified, so one prefix serves every denoising step; without autograd every call
        writes its suffix into the same buffers (`scratch_continuation`), copying no prefix keys.
        """
        batch, length = embeds.shape[:2]
        expected = (batch, 1, length, self.token_mask.shape[1] + length)
        if tuple(allowed.shape) != expected:
            raise ValueError(f"suffix attention mask must be {list(expected)}; got {list(allowed.shape)}")
        return self.scratch_continuation().run((embeds * self.input_scale).to(self.dtype), allowed)

    def suffix_positions(self, start: int, length: int) -> Tensor:
        """Position ids of suffix tokens start .. start + length - 1 after the prefix: [B, T], or [3, B, T] with
        M-RoPE (text positions: the three axes equal)."""
        positions = self.next_position[:, None] + start + torch.arange(length, device=self.next_position.device)
        return positions.expand(3, -1, -1) if self.mrope else positions

    def continuation(self) -> Continuation:
        """An empty suffix after this prefix whose keys/values persist across `Continuation.append` calls."""
        return Continuation(self)

    def scratch_continuation(self) -> Continuation:
        """An empty suffix after this prefix for a caller that runs one suffix at a time (a denoising step).

        Without autograd it is the same object at every call, rewound: its buffers are allocated once per prefix
        (once per sampling call) and each call overwrites the previous suffix, so it is valid until the next call.
        With autograd a new one each call (an in-place write would corrupt keys saved for backward)."""
        if not buffers_reusable():
            return Continuation(self)
        if self._scratch is None:
            self._scratch = Continuation(self)
        self._scratch.rewind()
        return self._scratch


class Continuation:
    """A growing causal suffix after a `LanguagePrefix`: every appended token's keys/values are kept.

    Each `append(embeds [B, T, C])` runs only the T new tokens: they attend to the real prefix tokens, to
    every visible suffix token appended before and causally to each other, at positions continuing each
    sample's prefix. Appending a sequence in one call or token by token gives the same hidden states (teacher
    forcing vs decoding). Tokens appended with `visible=False` take their positions but later appends never
    attend to them (hybrid's diffusion span hidden from its AR tokens). The prefix's own tensors are never
    modified, so one prefix serves many continuations. Without autograd the suffix's keys/values are written
    into preallocated buffers after a single copy of the prefix (`SuffixCache`); with autograd they are
    concatenated (transformers' DynamicCache).
    """

    def __init__(self, prefix: LanguagePrefix):
        self.prefix = prefix
        # DynamicCache.update concatenates into new tensors, so the prefix's keys/values stay intact.
        self.cache = SuffixCache(prefix.keys_values) if buffers_reusable() else DynamicCache(
            ddp_cache_data=prefix.keys_values)
        self.rewind()

    def rewind(self) -> None:
        """Forget the suffix: the next append starts right after the prefix again (in place of the old tokens)."""
        self.key_mask = self.prefix.token_mask.bool()  # (B, L + length): keys a new token may attend to
        self.length = 0  # suffix tokens appended so far
        if isinstance(self.cache, DynamicCache):
            self.cache.crop(self.prefix.token_mask.shape[1])

    def append(self, embeds: Tensor, visible: bool = True) -> Tensor:
        """Last-layer hidden states [B, T, C] of T new tokens `embeds` [B, T, C] given in the LLM's input space
        (a token table row as is; a head's own unit-scale vector times `prefix.input_scale`).

        visible=False: tokens appended later do not attend to these (their keys stay cached but masked)."""
        batch, length = embeds.shape[:2]
        if batch != self.key_mask.shape[0]:
            raise ValueError(f"continuation of a batch of {self.key_mask.shape[0]}: got {batch} rows of tokens")
        device = embeds.device
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = torch.cat([self.key_mask[:, None, :].expand(batch, length, -1),
                             causal.expand(batch, -1, -1)], dim=-1)[:, None]  # (B, 1, T, L + length + T)
        hidden = self.run(embeds.to(self.prefix.dtype), allowed)
        self.key_mask = torch.cat([self.key_mask, torch.full((batch, length), visible, device=device)], 1)
        return hidden

    def run(self, embeds: Tensor, allowed: Tensor) -> Tensor:
        """Hidden states [B, T, C] of `embeds` [B, T, C] (the LLM's input dtype and scale) at the next T suffix
        positions, attending where allowed [B, 1, T, L + length + T] is True; their keys/values are kept."""
        length = embeds.shape[1]
        slots = self.prefix.token_mask.shape[1] + self.length + torch.arange(length, device=embeds.device)
        if isinstance(self.cache, SuffixCache):
            self.cache.start = self.length
        hidden = self.prefix.language_model(inputs_embeds=embeds, attention_mask=additive_mask(allowed, embeds.dtype),
                                            past_key_values=self.cache, cache_position=slots,
                                            position_ids=self.prefix.suffix_positions(self.length, length),
                                            use_cache=True).last_hidden_state
        self.length += length
        return hidden


class SuffixCache(Cache):
    """A transformers `Cache` whose layers keep the prefix's keys/values in `SuffixKV` buffers: each forward writes
    its tokens' keys/values in place at suffix position `start` (set by the `Continuation` before the call)."""

    def __init__(self, keys_values: list[KV]):
        super().__init__(layers=[])
        self.suffix = [SuffixKV(k, v) for k, v in keys_values]
        self.start = 0

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, cache_kwargs: dict | None = None
               ) -> KV:
        return self.suffix[layer_idx].write(key_states, value_states, self.start)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.suffix[layer_idx].prefix_length + self.start
