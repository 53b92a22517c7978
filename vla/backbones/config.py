"""Configuration of a pretrained VLM backbone."""

from __future__ import annotations

from dataclasses import dataclass

KNOWN_FAMILIES = ("paligemma", "smolvlm", "qwen2_5_vl")


@dataclass
class BackboneConfig:
    """Which VLM to load and which parts of it to train.

    family: model family, one of KNOWN_FAMILIES; selects the HF classes and the prompt layout.
    pretrained: HF hub id or local folder passed to `from_pretrained` (required).
    freeze_vision: keep the vision tower (and projector) fixed.
    freeze_language: keep the language model (including its token embeddings) fixed.
    max_text_tokens: instruction tokens kept per sample; longer instructions are truncated.
    image_size: side S in pixels of the square image the vision tower sees (camera frames are resized to
        S x S). 0 = the checkpoint's: PaliGemma and SmolVLM have one fixed size (any other value is refused);
        Qwen2.5-VL (dynamic resolution) takes the size its processor is pinned to (min_pixels = max_pixels =
        S^2, as tiny models and saved policies are), else 224. For Qwen2.5-VL S must be a multiple of
        patch_size * merge_size (28 for the real models) and gives (S / 28)^2 image tokens per camera.
    """

    family: str = "paligemma"
    pretrained: str = ""
    freeze_vision: bool = False
    freeze_language: bool = False
    max_text_tokens: int = 32
    image_size: int = 0

    def __post_init__(self) -> None:
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(f"unknown backbone family {self.family!r}; known families: {', '.join(KNOWN_FAMILIES)}")
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1; got {self.max_text_tokens}")
        if self.image_size < 0:
            raise ValueError(f"backbone.image_size must be >= 0 (0 = the checkpoint's own); got {self.image_size}")

    def validate(self) -> None:
        """Raise a ValueError unless the config names a checkpoint to load."""
        if not self.pretrained:
            raise ValueError(
                "BackboneConfig.pretrained is empty: give an HF hub id or a local model folder "
                "(tests build one with vla.backbones.tiny.build_tiny_vlm)"
            )
