"""A pretrained HF vision-language model as a VLA backbone, with a learnable cognition token (CogACT).

Sequence per sample (right-padded, so positions never depend on the rest of the batch):

    [lead tokens] [cam 0 open, image tokens, close] ... [cam N-1 ...] [instruction tokens] [COG] [pad ...]

The image part has the same length for every sample; only the instruction length varies, and the
cognition token sits right after each sample's instruction. Its last-layer hidden state is `cognition`.

Qwen2.5-VL differs in two ways. Its processor resizes images dynamically (any size within
[min_pixels, max_pixels], rounded to 28 px); here every camera frame is resized to one fixed square
S x S (`backbone.image_size`) and the processor is pinned to it (min_pixels = max_pixels = S^2), so each
camera always gives (S / 28)^2 tokens. Its LLM uses multimodal RoPE: position ids [3, B, L]
(temporal, height, width), equal on all three axes for text, (t0, t0 + row, t0 + column) for an
image's tokens, with the text after an image continuing from the largest index + 1
(`Qwen2_5_VLModel.get_rope_index`'s layout, tested against it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoProcessor,
    DynamicCache,
    Idefics3ForConditionalGeneration,
    PaliGemmaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
)

from vla.backbones.config import BackboneConfig
from vla.backbones.continuation import LanguagePrefix, Vocabulary
from vla.types import BackboneOutput, additive_mask, validate_image_mask, validate_images


@dataclass(frozen=True)
class _Family:
    """How one model family is laid out: HF class, submodule names and prompt template."""

    model_cls: type[PreTrainedModel]
    model_types: tuple[str, ...]  # `model_type` in the config.json of this family's checkpoints
    vision_modules: tuple[str, ...]
    language_module: str
    position_offset: int  # PaliGemma counts positions from 1
    bidirectional_prefix: bool  # PaliGemma attends fully within image + prompt (prefix-LM)
    scales_inputs: bool  # the LLM multiplies input embeddings by sqrt(hidden) (Gemma)
    lead_text: str  # text before the images
    camera_open: tuple[str, ...]  # special tokens before each camera's image tokens
    camera_close: tuple[str, ...]
    text_template: str  # wraps the instruction; "{}" is replaced by it
    mrope: bool = False  # 3-D multimodal RoPE position ids (temporal, height, width), Qwen2.5-VL
    dynamic_resolution: bool = False  # the processor picks the image size; pinned here to backbone.image_size


_FAMILIES = {
    "paligemma": _Family(
        model_cls=PaliGemmaForConditionalGeneration,
        model_types=("paligemma",),
        vision_modules=("vision_tower", "multi_modal_projector"),
        language_module="language_model",
        position_offset=1,
        bidirectional_prefix=True,
        scales_inputs=True,
        lead_text="",
        camera_open=(),
        camera_close=(),
        text_template="{bos}{}\n",
    ),
    "smolvlm": _Family(  # SmolVLM checkpoints are Idefics3 models; layout follows its chat template
        model_cls=Idefics3ForConditionalGeneration,
        model_types=("idefics3",),
        vision_modules=("vision_model", "connector"),
        language_module="text_model",
        position_offset=0,
        bidirectional_prefix=False,
        scales_inputs=False,
        lead_text="{bos}User:",
        camera_open=("<fake_token_around_image>", "<global-img>"),
        camera_close=("<fake_token_around_image>",),
        text_template="{}<end_of_utterance>\nAssistant:",
    ),
    "qwen2_5_vl": _Family(  # layout follows its chat template, with the default system prompt it inserts
        model_cls=Qwen2_5_VLForConditionalGeneration,
        model_types=("qwen2_5_vl",),
        vision_modules=("visual",),  # the windowed ViT and its patch merger (the projector)
        language_module="language_model",
        position_offset=0,
        bidirectional_prefix=False,
        scales_inputs=False,
        lead_text="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        camera_open=("<|vision_start|>",),
        camera_close=("<|vision_end|>",),
        text_template="{}<|im_end|>\n<|im_start|>assistant\n",
        mrope=True,
        dynamic_resolution=True,
    ),
}
# Qwen2.5-VL's side when neither the config nor the processor fixes one: (224 / 28)^2 = 64 tokens per camera.
DEFAULT_DYNAMIC_IMAGE_SIZE = 224


class LLMInputs(NamedTuple):
    """The language model's inputs for one batch of observations.

    embeds [B, L, C]; attention_mask additive [B, 1, L, L]; position_ids [B, L], or [3, B, L] (temporal, height,
    width) for an M-RoPE family; token_mask bool [B, L] (True at real tokens); cog_index [B] (position of each
    sample's cognition token).
    """

    embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    token_mask: Tensor
    cog_index: Tensor


class VLMBackbone(nn.Module):
    """Pretrained VLM (base model; its LM head only when asked) + learnable cognition token.

    forward(images uint8 [B, N, H, W, 3], instructions B strings) -> BackboneOutput with
    tokens [B, L, C], token_mask bool [B, L], cognition [B, C]; C = hidden_size. With
    keep_cache=True also past_key_values: the LLM's prefix cache as a `LanguagePrefix`, through
    which a head runs its own tokens after the observation (and, with the LM head kept, reads and
    writes vocabulary tokens through its `Vocabulary`).
    """

    def __init__(self, cfg: BackboneConfig, load_weights: bool = True, lm_head: bool = False) -> None:
        """load_weights=False builds the architecture from the saved HF config only (weights then come
        from a policy checkpoint's model.safetensors, so they are not read twice).

        lm_head: keep the VLM's LM head (token heads predict vocabulary tokens with it); otherwise it is
        dropped, as heads that read hidden states never use it (and unused weights upset DDP)."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.family = _FAMILIES[cfg.family]
        _check_family(cfg)
        self.processor = _load_processor(cfg)
        full = (_load_weights(self.family.model_cls, cfg, lm_head) if load_weights
                else _from_config(self.family.model_cls, cfg))
        self.vlm = full.model
        self.lm_head: nn.Linear | None = full.lm_head if lm_head else None
        self._full_config = full.config
        self.text_vocab_size: int = self.vlm.get_input_embeddings().num_embeddings  # before any action tokens
        self.num_added_tokens = 0
        self.hidden_size: int = full.config.text_config.hidden_size
        self.image_size: int = self._pin_image_size(full.config.vision_config)
        self._text_cache: dict[str, list[int]] = {}
        self._init_image_stats()
        self._init_prompt_ids()
        embeddings = self.vlm.get_input_embeddings().weight
        # Match the text embedding scale so the token looks like any other input at initialisation.
        self.cognition_token = nn.Parameter(torch.randn(self.hidden_size) * embeddings.detach().float().std())
        self._apply_freezing()

    def save_structure(self, directory) -> None:
        """Write the VLM's HF config and processor (no weights) so the backbone rebuilds offline.

        The config keeps the text vocabulary: action tokens are added again by the head that added them."""
        self._full_config.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    # ---- vocabulary (token heads) ------------------------------------------------------------------

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The LLM's token table and LM head, or None when the LM head was dropped."""
        if self.lm_head is None:
            return None
        softcap = getattr(self._full_config.get_text_config(), "final_logit_softcapping", None)
        return Vocabulary(self.vlm.get_input_embeddings(), self.lm_head, softcap)

    def add_action_tokens(self, count: int, reuse_text_tokens: bool = False) -> Tensor:
        """Global ids [count] (long) for `count` action tokens; local action id k is ids[k].

        New tokens (default): the token table and LM head grow by `count` rows after the text vocabulary
        (ids text_vocab_size .. + count - 1), so they never collide with a text token. The new rows start
        at the mean of the existing ones plus noise of their per-dimension spread (distinct, typical
        tokens). reuse_text_tokens: OpenVLA's scheme; the last `count` ids of the text vocabulary, taken
        to be its least used, are overwritten by training; an id the prompt layout or the tokenizer's
        special tokens use is refused.
        """
        if self.lm_head is None:
            raise ValueError("action tokens need the VLM's LM head, which this backbone dropped; build it with "
                             "VLMBackbone(..., lm_head=True) (VLAPolicy does this for token heads)")
        if self.num_added_tokens:
            raise ValueError(f"this backbone already holds {self.num_added_tokens} action tokens; one token head "
                             f"per backbone")
        if count < 1:
            raise ValueError(f"the number of action tokens must be >= 1; got {count}")
        vocab = self.text_vocab_size
        if not reuse_text_tokens:
            self._grow_vocabulary(count)
            self.num_added_tokens = count
            return torch.arange(vocab, vocab + count)
        reserved = self.reserved_token_ids()
        if count > vocab - len(reserved):
            raise ValueError(f"cannot reuse {count} text tokens as action tokens: the text vocabulary has {vocab} "
                             f"ids, {len(reserved)} of them used by the prompt or special tokens; use new tokens "
                             f"(head.vocabulary=new) or a tokenizer with fewer ids")
        ids = torch.arange(vocab - count, vocab)
        clash = sorted(set(reserved) & set(ids.tolist()))
        if clash:
            raise ValueError(f"cannot reuse the last {count} text token ids ({vocab - count}..{vocab - 1}) as action "
                             f"tokens: the prompt or special tokens use {len(clash)} of them (e.g. {clash[:8]}); use "
                             f"new tokens (head.vocabulary=new) or a tokenizer with fewer ids")
        return ids

    def reserved_token_ids(self) -> list[int]:
        """Ids the prompt layout and the text tokenizer's special tokens use (never reused for actions)."""
        tok = self.processor.tokenizer
        ids = set(tok.all_special_ids) | set(self._lead_ids) | set(self._open_ids) | set(self._close_ids)
        ids |= set(self._text_before) | set(self._text_after)
        if tok.pad_token_id is not None:
            ids.add(tok.pad_token_id)
        return sorted(ids)

    def _grow_vocabulary(self, count: int) -> None:
        """Append `count` rows to the token table and (unless tied to it) the LM head, in place (as HF's
        resize_token_embeddings does), so the modules keep their class and the parameter names stay."""
        table = self.vlm.get_input_embeddings()
        tied = self.lm_head.weight is table.weight
        table.weight = nn.Parameter(_with_new_rows(table.weight.data, count), requires_grad=table.weight.requires_grad)
        table.num_embeddings += count
        head = self.lm_head
        if tied:
            head.weight = table.weight
        else:
            head.weight = nn.Parameter(_with_new_rows(head.weight.data, count), requires_grad=head.weight.requires_grad)
        if head.bias is not None:
            head.bias = nn.Parameter(torch.cat([head.bias.data, head.bias.data.new_zeros(count)]),
                                     requires_grad=head.bias.requires_grad)
        head.out_features += count

    # ---- setup -------------------------------------------------------------------------------------

    def _pin_image_size(self, vision_config) -> int:
        """The side S of the square image the vision tower sees (see `BackboneConfig.image_size`).

        Qwen2.5-VL: the processor is pinned to S (min_pixels = max_pixels = S^2), so an S x S frame passes its
        smart_resize unchanged and `save_structure` records S with the backbone."""
        asked = self.cfg.image_size
        if not self.family.dynamic_resolution:
            fixed = vision_config.image_size
            if asked not in (0, fixed):
                raise ValueError(f"the {self.cfg.family} backbone {self.cfg.pretrained!r} sees {fixed} px images "
                                 f"(fixed by its vision tower); backbone.image_size={asked} must be 0 or {fixed}")
            return fixed
        ip = self.processor.image_processor
        tower = (vision_config.patch_size, vision_config.spatial_merge_size, vision_config.temporal_patch_size)
        made = (ip.patch_size, ip.merge_size, ip.temporal_patch_size)
        if made != tower:
            raise ValueError(f"the image processor of {self.cfg.pretrained!r} makes patches of (patch_size, "
                             f"merge_size, temporal_patch_size) = {made}, but its vision tower takes {tower}; save "
                             f"the processor of the model it was made from")
        # (min_pixels, max_pixels) live in `size` for the slow and the fast processor alike
        low, high = ip.size["shortest_edge"], ip.size["longest_edge"]
        pinned = math.isqrt(low) if low == high else 0
        size = asked or pinned or DEFAULT_DYNAMIC_IMAGE_SIZE
        factor = ip.patch_size * ip.merge_size
        if size % factor:
            raise ValueError(f"backbone.image_size={size} for {self.cfg.pretrained!r} must be a multiple of its "
                             f"patch_size * merge_size = {factor} (one image token per {factor} x {factor} px)")
        if not low <= size * size <= high:
            raise ValueError(f"backbone.image_size={size} gives {size * size} pixels, outside the range [{low}, "
                             f"{high}] (min_pixels, max_pixels) the processor of {self.cfg.pretrained!r} allows; set "
                             f"backbone.image_size=0 to use its own")
        ip.min_pixels = ip.max_pixels = size * size
        ip.size = {"shortest_edge": size * size, "longest_edge": size * size}
        return size

    def _init_image_stats(self) -> None:
        ip = self.processor.image_processor
        scale = ip.rescale_factor if ip.do_rescale else 1.0
        mean = torch.tensor(ip.image_mean if ip.do_normalize else [0.0] * 3, dtype=torch.float32)
        std = torch.tensor(ip.image_std if ip.do_normalize else [1.0] * 3, dtype=torch.float32)
        # uint8 pixel p maps to (p * scale - mean) / std = p * gain + bias.
        self.register_buffer("_pixel_gain", (scale / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_pixel_bias", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def _init_prompt_ids(self) -> None:
        tok = self.processor.tokenizer
        bos = tok.bos_token or ""
        self._lead_ids = self._encode(self.family.lead_text.format(bos=bos))
        self._open_ids = tok.convert_tokens_to_ids(list(self.family.camera_open))
        self._close_ids = tok.convert_tokens_to_ids(list(self.family.camera_close))
        before, after = self.family.text_template.split("{}")
        self._text_before = self._encode(before.format(bos=bos))
        self._text_after = self._encode(after)

    def _encode(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _apply_freezing(self) -> None:
        if self.cfg.freeze_vision:
            for name in self.family.vision_modules:
                getattr(self.vlm, name).requires_grad_(False)
        if self.cfg.freeze_language:
            getattr(self.vlm, self.family.language_module).requires_grad_(False)

    # ---- preprocessing -----------------------------------------------------------------------------

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B, N, H, W, 3] -> normalised pixel values [B * N, 3, S, S] in the model dtype.

        Torch equivalent of the HF image processor (resize, rescale, normalise), batched, on the model device.
        """
        validate_images(images)
        x = images.to(self._pixel_gain.device).flatten(0, 1).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
            )
            x = x.clamp(0, 255).round()  # the HF processor resizes in uint8 PIL space
        return (x * self._pixel_gain + self._pixel_bias).to(self.cognition_token.dtype)

    def text_ids(self, instruction: str) -> list[int]:
        """Token ids of the wrapped, truncated instruction (cached per string)."""
        ids = self._text_cache.get(instruction)
        if ids is None:
            body = self._encode(instruction)[: self.cfg.max_text_tokens]
            ids = self._text_cache[instruction] = self._text_before + body + self._text_after
        return ids

    # ---- forward -----------------------------------------------------------------------------------

    def llm_inputs(self, images: Tensor, instructions: list[str], image_mask: Tensor | None = None) -> LLMInputs:
        """What the language model is called with for a batch (see `LLMInputs`). image_mask bool [B, N]: False at
        image slots the robot lacks; their tokens (the wrapping text included) are left out of token_mask, so
        nothing attends to them."""
        validate_images(images)
        validate_image_mask(image_mask, images)
        batch = images.shape[0]
        if len(instructions) != batch:
            raise ValueError(f"got {len(instructions)} instructions for a batch of {batch} images")
        prefix = self._image_prefix(self.preprocess(images), batch)  # [B, P, C]
        text, text_len = self._text_embeddings(instructions)  # [B, T, C], [B]
        embeds = torch.cat([prefix, text], dim=1)
        cog_index = prefix.shape[1] + text_len  # [B]
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        token_mask = positions[None, :] <= cog_index[:, None]  # [B, L]
        if image_mask is not None:
            token_mask[:, : prefix.shape[1]] &= self._prefix_mask(image_mask.to(token_mask.device), prefix.shape[1])
        if self.family.mrope:
            position_ids = self._mrope_positions(images.shape[1], embeds.shape[1])[:, None].expand(-1, batch, -1)
        else:
            position_ids = (positions + self.family.position_offset).expand(batch, -1)
        return LLMInputs(embeds, self._attention_mask(token_mask, cog_index, embeds.dtype), position_ids, token_mask,
                         cog_index)

    def _prefix_mask(self, image_mask: Tensor, length: int) -> Tensor:
        """bool [B, P] over the image prefix (lead text, then each slot's open ids + image tokens + close ids, as
        `_image_prefix` lays it out): False throughout a masked slot's block."""
        lead = len(self._lead_ids)
        block = (length - lead) // image_mask.shape[1]
        return torch.cat([image_mask.new_ones(image_mask.shape[0], lead),
                          image_mask.repeat_interleave(block, dim=1)], dim=1)

    def _mrope_positions(self, cameras: int, length: int) -> Tensor:
        """M-RoPE position ids [3, L] (temporal, height, width) of the prompt layout, as
        `Qwen2_5_VLModel.get_rope_index` assigns them: a text token has the same index on all three axes, one more
        than the token before; an image's R x C tokens sit at (s, s + row, s + column), s being the index the next
        text token would have had, and the text after the image continues at s + max(R, C). The layout is the same
        for every sample (the instructions come last, right-padded), so one row serves the batch."""
        rows = cols = self.image_size // (self.processor.image_processor.patch_size
                                          * self.processor.image_processor.merge_size)
        grid = torch.stack([torch.zeros(rows * cols, dtype=torch.long),
                            torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)])  # [3, R*C]
        parts, start = [], 0

        def text(count: int) -> None:
            nonlocal start
            parts.append(torch.arange(start, start + count).expand(3, -1))
            start += count

        text(len(self._lead_ids))
        for _ in range(cameras):
            text(len(self._open_ids))
            parts.append(grid + start)
            start += max(rows, cols)
            text(len(self._close_ids))
        text(length - sum(part.shape[1] for part in parts))  # instruction, cognition token, padding
        return torch.cat(parts, dim=1).to(self.cognition_token.device)

    def forward(self, images: Tensor, instructions: list[str], keep_cache: bool = False,
                image_mask: Tensor | None = None) -> BackboneOutput:
        """images uint8 [B, N, H, W, 3], instructions B strings -> BackboneOutput (see class docstring).

        keep_cache: also return the LLM's keys/values of the prefix as `past_key_values` (a
        `LanguagePrefix`), for heads that run their own tokens through the LLM after it.
        image_mask: bool [B, N], False at slots without a camera (their tokens are masked out); None = all real.
        """
        inputs = self.llm_inputs(images, instructions, image_mask)
        cache = DynamicCache() if keep_cache else None  # passed in, so that nothing (e.g. checkpointing) drops it
        hidden = self.language_model(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                                     position_ids=inputs.position_ids, past_key_values=cache,
                                     use_cache=keep_cache).last_hidden_state
        cognition = hidden[torch.arange(hidden.shape[0], device=hidden.device), inputs.cog_index]
        prefix = self._language_prefix(cache, inputs) if keep_cache else None
        return BackboneOutput(tokens=hidden, token_mask=inputs.token_mask, cognition=cognition, past_key_values=prefix)

    def _language_prefix(self, cache: DynamicCache, inputs: LLMInputs) -> LanguagePrefix:
        """The filled prefix cache as a `LanguagePrefix`; suffix positions continue after each cognition token
        (with M-RoPE, after the largest index on any axis: the cognition token is text, equal on all three)."""
        positions = inputs.position_ids.amax(0) if self.family.mrope else inputs.position_ids  # [B, L]
        next_position = positions.gather(1, inputs.cog_index[:, None])[:, 0] + 1
        scale = self.hidden_size ** -0.5 if self.family.scales_inputs else 1.0
        return LanguagePrefix([(layer.keys, layer.values) for layer in cache.layers], inputs.token_mask,
                              next_position, self.language_model, scale, inputs.embeds.dtype, self.vocabulary,
                              mrope=self.family.mrope)

    @property
    def language_model(self) -> nn.Module:
        """The VLM's decoder stack (an HF base model: embeddings, layers, final norm)."""
        return getattr(self.vlm, self.family.language_module)

    def _embed_ids(self, ids: list[int], batch: int) -> Tensor:
        """Embeddings of a fixed id list, [B, len(ids), C]."""
        table = self.vlm.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=table.weight.device)).unsqueeze(0).expand(batch, -1, -1)

    def _encode_images(self, pixels: Tensor) -> Tensor:
        """[B * N, 3, S, S] -> projected image tokens [B * N, K, C]."""
        if self.cfg.family == "paligemma":
            return self.vlm.get_image_features(pixels)
        if self.family.dynamic_resolution:
            patches, grid = self.vision_patches(pixels)
            return self.vlm.visual(patches, grid_thw=grid).view(pixels.shape[0], -1, self.hidden_size)
        # Calling the tower directly skips Idefics3's drop-all-zero-images step, which would reshuffle the batch.
        return self.vlm.connector(self.vlm.vision_model(pixel_values=pixels).last_hidden_state)

    def vision_patches(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Qwen2.5-VL: images [M, 3, S, S] -> the flattened patches its vision tower takes, [M * G * G, 3 * T * P * P],
        and each image's grid (1, G, G) as [M, 3] (G = S / P), laid out as `Qwen2VLImageProcessor` does: the frame
        repeated T = temporal_patch_size times, patches ordered by merge window (2 x 2 neighbours in a row)."""
        ip = self.processor.image_processor
        count, patch, merge, frames = pixels.shape[0], ip.patch_size, ip.merge_size, ip.temporal_patch_size
        side = self.image_size // patch
        x = pixels[:, None].expand(-1, frames, -1, -1, -1)  # [M, T, 3, S, S]
        x = x.reshape(count, frames, 3, side // merge, merge, patch, side // merge, merge, patch)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [M, G/m, G/m, m, m, 3, T, P, P]
        grid = torch.tensor([[1, side, side]], device=pixels.device).expand(count, -1)
        return x.reshape(count * side * side, 3 * frames * patch * patch), grid

    def _image_prefix(self, pixels: Tensor, batch: int) -> Tensor:
        """[B * N, 3, S, S] -> lead text + every camera's wrapped image tokens, [B, P, C]."""
        feats = self._encode_images(pixels)
        feats = feats.view(batch, -1, *feats.shape[1:])  # [B, N, K, C]
        parts = [self._embed_ids(self._lead_ids, batch)]
        for cam in range(feats.shape[1]):
            parts += [
                self._embed_ids(self._open_ids, batch),
                feats[:, cam].to(parts[0].dtype),
                self._embed_ids(self._close_ids, batch),
            ]
        return torch.cat(parts, dim=1)

    def _text_embeddings(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """Right-padded instruction embeddings with the cognition token after each: [B, T, C], lengths [B]."""
        device = self.cognition_token.device
        rows = [self.text_ids(text) for text in instructions]
        lengths = torch.tensor([len(r) for r in rows], device=device)
        width = int(lengths.max()) + 1  # + cognition slot
        pad = self.processor.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        embeds = self.vlm.get_input_embeddings()(ids)
        is_cog = torch.arange(width, device=device)[None, :] == lengths[:, None]
        embeds = torch.where(is_cog[..., None], self.cognition_token.to(embeds.dtype), embeds)
        return embeds, lengths

    def _attention_mask(self, token_mask: Tensor, cog_index: Tensor, dtype: torch.dtype) -> Tensor:
        """Additive mask [B, 1, L, L]: causal, or prefix-LM for PaliGemma; padding never attended."""
        length = token_mask.shape[1]
        pos = torch.arange(length, device=token_mask.device)
        allowed = pos[None, :, None] >= pos[None, None, :]  # [1, Lq, Lk] causal
        if self.family.bidirectional_prefix:
            in_prefix = pos[None, :] < cog_index[:, None]  # [B, L]: image + prompt, not the cognition token
            allowed = allowed | (in_prefix[:, :, None] & in_prefix[:, None, :])
        return additive_mask(allowed & token_mask[:, None, :], dtype).unsqueeze(1)


# Weights of the HF model the wrapper drops unless asked for its LM head, so a checkpoint may lack them.
_UNUSED_WEIGHTS = ("lm_head.",)


def _with_new_rows(weight: Tensor, count: int) -> Tensor:
    """weight [V, C] followed by `count` rows drawn around its mean with its per-dimension spread: [V + count, C]."""
    rows = weight.float()
    new = rows.mean(0) + rows.std(0) * torch.randn(count, rows.shape[1], device=weight.device)
    return torch.cat([weight, new.to(weight.dtype)])


def _check_family(cfg: BackboneConfig) -> None:
    """Raise a ValueError unless the folder's config.json `model_type` belongs to `cfg.family`.

    Without this, HF builds the family's class from a foreign config and initialises every weight at random.
    """
    try:
        model_type = PretrainedConfig.get_config_dict(cfg.pretrained)[0].get("model_type")
    except (OSError, ValueError) as err:
        raise OSError(f"could not read the config.json of the {cfg.family} backbone {cfg.pretrained!r}: {err}") from err
    expected = _FAMILIES[cfg.family].model_types
    if model_type not in expected:
        known = ", ".join(f"{name} ({'/'.join(f.model_types)})" for name, f in _FAMILIES.items())
        raise ValueError(f"backbone {cfg.pretrained!r} is a {model_type!r} model (config.json model_type), but "
                         f"backbone.family is {cfg.family!r}, which loads model_type {'/'.join(expected)}; "
                         f"set backbone.family to match (families and their model types: {known})")


def _load_weights(cls: type, cfg: BackboneConfig, lm_head: bool = False):
    """The pretrained model; a ValueError when any weight the backbone uses (the LM head too when kept, unless
    it is tied to the token table) is missing from the checkpoint or has another shape (HF would initialise it
    at random with only a warning)."""
    full, info = _load(cls, cfg, output_loading_info=True)
    tied = full.lm_head.weight is full.model.get_input_embeddings().weight
    unused = _UNUSED_WEIGHTS if tied or not lm_head else ()
    missing = [k for k in info["missing_keys"] if not k.startswith(unused)]
    mismatched = [k for k, *_ in info.get("mismatched_keys", [])]
    if missing or mismatched:
        raise ValueError(f"backbone {cfg.pretrained!r} lacks {len(missing)} pretrained weights the {cfg.family} model "
                         f"needs (e.g. {missing[:3]}) and has {len(mismatched)} of another shape (e.g. "
                         f"{mismatched[:3]}); they would start random. Is it a complete {cfg.family} checkpoint?")
    return full


def _load_processor(cfg: BackboneConfig):
    """The checkpoint's processor; a ValueError saying how to add an image processor when the folder has none."""
    folder = Path(cfg.pretrained)
    # Qwen2.5-VL: transformers picks its fast (torchvision) image processor by default and warns; ask for it
    options = {"use_fast": True} if _FAMILIES[cfg.family].dynamic_resolution else {}
    processor = None if folder.is_dir() and not _has_image_processor(folder) else _load(AutoProcessor, cfg, **options)
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(f"backbone {cfg.pretrained!r} has no image processor (preprocessor_config.json), which sets "
                         f"the image size, mean and std. Save the processor of the model it was made from into the "
                         f"folder: AutoProcessor.from_pretrained(HUB_ID).save_pretrained({cfg.pretrained!r})")
    return processor


def _has_image_processor(folder: Path) -> bool:
    """Whether a local model folder holds an image processor config (its own file, or inside processor_config.json)."""
    if (folder / "preprocessor_config.json").is_file():
        return True
    combined = folder / "processor_config.json"
    return combined.is_file() and "image_processor" in json.loads(combined.read_text())


def _from_config(cls: type, cfg: BackboneConfig):
    config = _load(AutoConfig, cfg)
    return cls._from_config(config)


def _load(cls: type, cfg: BackboneConfig, **kwargs):
    """cls.from_pretrained(cfg.pretrained, **kwargs), with an OSError naming the path when it fails."""
    try:
        return cls.from_pretrained(cfg.pretrained, **kwargs)
    except (OSError, ValueError) as err:  # a missing local folder surfaces as HFValidationError, a ValueError
        raise OSError(
            f"could not load the {cfg.family} backbone from {cfg.pretrained!r} with {cls.__name__}: {err}"
        ) from err
