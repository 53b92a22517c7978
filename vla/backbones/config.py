"""Configuration of a pretrained VLM backbone."""

from __future__ import annotations

from dataclasses import dataclass

KNOWN_FAMILIES = ("paligemma", "smolvlm")


@dataclass
class BackboneConfig:
    """Which VLM to load and which parts of it to train.

    family: model family, one of KNOWN_FAMILIES; selects the HF classes and the prompt layout.
    pretrained: HF hub id or local folder passed to `from_pretrained` (required).
    freeze_vision: keep the vision tower (and projector) fixed.
    freeze_language: keep the language model (including its token embeddings) fixed.
    max_text_tokens: instruction tokens kept per sample; longer instructions are truncated.
    """

    family: str = "paligemma"
    pretrained: str = ""
    freeze_vision: bool = False
    freeze_language: bool = False
    max_text_tokens: int = 32

    def __post_init__(self) -> None:
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(f"unknown backbone family {self.family!r}; known families: {', '.join(KNOWN_FAMILIES)}")
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1; got {self.max_text_tokens}")

    def validate(self) -> None:
        """Raise a ValueError unless the config names a checkpoint to load."""
        if not self.pretrained:
            raise ValueError(
                "BackboneConfig.pretrained is empty: give an HF hub id or a local model folder "
                "(tests build one with vla.backbones.tiny.build_tiny_vlm)"
            )
