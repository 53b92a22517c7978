"""The data contracts shared by datasets, simulators, robots, backbones and heads.

Shapes use B = batch, N = cameras, H = action horizon, D = action dim, S = state dim,
L = backbone tokens, C = backbone width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vla.backbones.continuation import Continuation


@dataclass
class Observation:
    """What a policy sees at one control step, batched.

    images: uint8 [B, N, H, W, 3] camera frames, in the camera order of the embodiment.
    state: float32 [B, S] proprioceptive state in the embodiment's own units (unnormalised).
    instruction: B language instructions.
    embodiment: B embodiment names; they select the normalisation statistics.
    image_mask: bool [B, N]; False at image slots the robot has no camera for (their images are ignored, whatever
        they hold). None: every slot is a real camera.
    """

    images: Tensor
    state: Tensor
    instruction: list[str]
    embodiment: list[str]
    image_mask: Tensor | None = None

    def __post_init__(self) -> None:
        validate_images(self.images)
        if self.state.ndim != 2 or not self.state.is_floating_point():
            raise ValueError(f"state must be a float tensor [B, S]; got {self.state.dtype} {list(self.state.shape)}")
        batch = self.images.shape[0]
        for name, value in (("state", self.state.shape[0]), ("instruction", len(self.instruction)),
                            ("embodiment", len(self.embodiment))):
            if value != batch:
                raise ValueError(f"observation batch sizes differ: images has {batch}, {name} has {value}")
        if not torch.isfinite(self.state).all():
            raise ValueError("state contains NaN or inf")
        validate_image_mask(self.image_mask, self.images)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Observation:
        mask = None if self.image_mask is None else self.image_mask.to(device)
        return Observation(self.images.to(device), self.state.to(device), self.instruction, self.embodiment, mask)


def validate_images(images: Tensor) -> None:
    """Raise a ValueError naming the problem unless images is uint8 [B, N, H, W, 3]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, N, H, W, 3] in 0..255; got dtype {images.dtype}")
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [B, N, H, W, 3]; got {list(images.shape)}")


def validate_image_mask(image_mask: Tensor | None, images: Tensor) -> None:
    """Raise a ValueError unless image_mask is None or bool [B, N] for images [B, N, H, W, 3] with at least one real
    image per sample."""
    if image_mask is None:
        return
    if image_mask.dtype != torch.bool or tuple(image_mask.shape) != tuple(images.shape[:2]):
        raise ValueError(f"image_mask must be bool [B, N] = {list(images.shape[:2])} (one flag per image slot); got "
                         f"{image_mask.dtype} {list(image_mask.shape)}")
    if not image_mask.any(dim=1).all():
        raise ValueError("image_mask masks every image slot of a sample; a sample needs at least one camera")


@dataclass
class ActionChunk:
    """H future actions per sample in the embodiment's own units.

    actions: float32 [B, H, D].
    mask: bool [B, D]; False marks padded dimensions the embodiment does not have.
    """

    actions: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.actions.ndim != 3:
            raise ValueError(f"actions must be [B, H, D]; got {list(self.actions.shape)}")
        if self.mask.shape != (self.actions.shape[0], self.actions.shape[2]):
            raise ValueError(f"mask must be [B, D]={[self.actions.shape[0], self.actions.shape[2]]}; "
                             f"got {list(self.mask.shape)}")


KV = tuple[Tensor, Tensor]  # one attention layer's keys and values, each [B, heads, M, C / heads]


def repeat_kv(memory: list[KV], repeats: int) -> list[KV]:
    """Every layer's keys/values with each sample repeated `repeats` times in a row (repeat_interleave)."""
    return [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in memory]


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean attention mask (True = may attend) -> additive float mask (0 or the dtype's lowest value)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class PrefixCache(Protocol):
    """An encoded observation prefix that more tokens can be run after, inside the backbone's LLM
    (implemented by `vla.backbones.continuation.LanguagePrefix`)."""

    token_mask: Tensor  # bool [B, L]; True at real prefix tokens

    def repeat_interleave(self, repeats: int) -> PrefixCache:
        """Each sample repeated `repeats` times in a row."""
        ...

    def extend(self, embeds: Tensor, allowed: Tensor) -> Tensor:
        """Last-layer hidden states [B, T, C] of `embeds` [B, T, C] placed after the prefix; allowed: bool
        [B, 1, T, L + T] says which keys (prefix, then suffix) each suffix token may attend to."""
        ...

    def continuation(self) -> Continuation:
        """A causal suffix after the prefix whose keys/values persist between `append` calls (token decoding)."""
        ...


@dataclass
class BackboneOutput:
    """What a VLM backbone hands to an action head.

    tokens: [B, L, C] last-layer hidden states of the whole prefix (image + text + cognition).
    token_mask: bool [B, L]; True where tokens are real (not padding).
    cognition: [B, C] hidden state at the learnable cognition token (CogACT's f_c).
    past_key_values: the LLM's keys/values of the prefix (a `PrefixCache`), present when the backbone ran
        with keep_cache=True, for heads that denoise inside the LLM.
    """

    tokens: Tensor
    token_mask: Tensor
    cognition: Tensor
    past_key_values: PrefixCache | None = None

    def repeat_interleave(self, repeats: int) -> BackboneOutput:
        """Each sample repeated `repeats` times in a row."""
        cache = self.past_key_values
        return BackboneOutput(self.tokens.repeat_interleave(repeats, 0), self.token_mask.repeat_interleave(repeats, 0),
                              self.cognition.repeat_interleave(repeats, 0),
                              None if cache is None else cache.repeat_interleave(repeats))


@dataclass
class Cond:
    """Conditioning for an action head: backbone output plus the normalised, padded state.

    proprio: float [B, S_max] normalised state, zero in padded dims.
    embodiment: the B samples' embodiment names (a head with a part per robot picks it by name); empty when the
        caller did not say (heads that need it raise).
    """

    backbone: BackboneOutput
    proprio: Tensor
    extras: dict = field(default_factory=dict)
    embodiment: list[str] = field(default_factory=list)

    def repeat_interleave(self, repeats: int) -> Cond:
        """Each sample repeated `repeats` times in a row (extras are shared, not repeated)."""
        if repeats == 1:
            return self
        return Cond(self.backbone.repeat_interleave(repeats), self.proprio.repeat_interleave(repeats, 0), self.extras,
                    [name for name in self.embodiment for _ in range(repeats)])
