"""The visual feature space the latent action model compares frames in: frames uint8 [B, S, S, 3] -> features
float32 [B, P, F] (P patches of F numbers each), frozen.

`features.type`:
- `patches` (default): each frame cut into a grid of patch_size x patch_size pixel patches, each patch flattened
  (row-major, RGB last) and scaled from 0..255 to [-1, 1]: P = (S / patch_size)^2, F = 3 * patch_size^2. Genie and
  LAPA learn their latent actions in pixel space; no pretrained weights can be fetched on this offline machine, and
  pixels need none, so this is what runs here and in the tests.
- `dinov2`: UniVLA's choice (METHODS.md section 5): the patch tokens of a frozen DINOv2
  (`transformers.AutoModel.from_pretrained(model)`, a hub id or a local folder; a Dinov2 or Dinov2WithRegisters
  model) from its `last_hidden_state` (after the final layer norm, UniVLA's `x_norm_patchtokens`) without the CLS and
  register tokens; frames scaled to [0, 1] and normalised with ImageNet's mean / std as DINOv2 was trained. P =
  (S / model patch size)^2, F = the model's hidden size. Semantic features ignore pixel-level noise (lighting, texture)
  that pixel space must reconstruct; use it where the weights can be had (facebook/dinov2-base, S = 224).

Frames come at the latent action model's `image_size` S (frame sources resize them as they read them); S must be a
multiple of the patch size. `fingerprint()` identifies the feature space (the config and, for dinov2, the model's
weights): a latent action model records the one it was fit in and refuses to run in another.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import draccus
import torch
from torch import Tensor, nn

from vla.registry import choice_class

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's training normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_digest(module: nn.Module, prefix: str) -> str:
    """sha256 of `prefix` and every tensor of module's state dict (names and bytes, in name order)."""
    digest = hashlib.sha256(prefix.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class FeatureConfig(draccus.ChoiceRegistry, ABC):
    """Base of the feature-space configs; `type` picks the subclass (--lam.features.type patches | dinov2)."""

    @classmethod
    def default_choice_name(cls) -> str:
        return "patches"

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    @abstractmethod
    def build(self, image_size: int) -> FeatureSpace:
        """The frozen feature extractor for frames of image_size x image_size."""

    def to_dict(self) -> dict:
        return {"type": self.type, **asdict(self)}


def feature_config_from_dict(values: dict) -> FeatureConfig:
    """The FeatureConfig `to_dict` wrote."""
    values = dict(values)
    return choice_class(FeatureConfig, values.pop("type"), "feature space")(**values)


class FeatureSpace(nn.Module, ABC):
    """Frozen: frames uint8 [B, S, S, 3] -> float32 [B, num_patches, dim]."""

    num_patches: int
    dim: int

    def __init__(self, config: FeatureConfig, image_size: int, patch_size: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"the {config.type} feature space cuts frames into {patch_size}-pixel patches; "
                             f"image_size {image_size} is not a multiple of {patch_size}")
        self.config, self.image_size = config, image_size
        self.num_patches = (image_size // patch_size) ** 2

    @abstractmethod
    def forward(self, frames: Tensor) -> Tensor: ...

    def fingerprint(self) -> str:
        """sha256 identifying the feature space: its type and settings (not where a model was loaded from) and the
        weights where there are any."""
        settings = {k: v for k, v in self.config.to_dict().items() if k != "model"}
        return weights_digest(self, json.dumps(settings, sort_keys=True))

    def train(self, mode: bool = True) -> FeatureSpace:
        return super().train(False)  # frozen: never in training mode (no dropout)


@FeatureConfig.register_subclass("patches")
@dataclass
class PatchFeaturesConfig(FeatureConfig):
    patch_size: int = 8  # pixels per patch side

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"features.patch_size must be >= 1; got {self.patch_size}")

    def build(self, image_size: int) -> FeatureSpace:
        return PixelPatches(self, image_size)


class PixelPatches(FeatureSpace):
    def __init__(self, config: PatchFeaturesConfig, image_size: int):
        super().__init__(config, image_size, config.patch_size)
        self.patch_size = config.patch_size
        self.dim = 3 * config.patch_size ** 2

    def forward(self, frames: Tensor) -> Tensor:
        """uint8 [B, S, S, 3] -> [B, (S/p)^2, 3 p^2] in [-1, 1]."""
        b, s, p = frames.shape[0], frames.shape[1], self.patch_size
        x = frames.float().div(127.5).sub(1.0).reshape(b, s // p, p, s // p, p, 3)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (s // p) ** 2, p * p * 3)


@FeatureConfig.register_subclass("dinov2")
@dataclass
class Dinov2FeaturesConfig(FeatureConfig):
    model: str = "facebook/dinov2-base"  # a hub id (through the HF cache; offline with HF_HUB_OFFLINE=1) or a folder

    def build(self, image_size: int) -> FeatureSpace:
        return Dinov2Patches(self, image_size)


class Dinov2Patches(FeatureSpace):
    def __init__(self, config: Dinov2FeaturesConfig, image_size: int):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(config.model)
        if not hasattr(model.config, "patch_size") or "dinov2" not in model.config.model_type:
            raise ValueError(f"features.model {config.model!r} is a {model.config.model_type} model; the dinov2 "
                             f"feature space needs a DINOv2 (e.g. facebook/dinov2-base)")
        super().__init__(config, image_size, model.config.patch_size)
        self.model = model.requires_grad_(False).eval()
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0))  # CLS (+ registers) come first
        self.dim = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """uint8 [B, S, S, 3] -> the model's patch tokens [B, (S/p)^2, hidden]."""
        pixels = (frames.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        return self.model(pixel_values=pixels).last_hidden_state[:, self.skip:].float()
