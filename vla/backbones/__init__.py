"""VLM backbones: pretrained HF vision-language models wrapped to produce `BackboneOutput`."""

from vla.backbones.config import KNOWN_FAMILIES, BackboneConfig
from vla.backbones.hf_vlm import VLMBackbone

__all__ = ["KNOWN_FAMILIES", "BackboneConfig", "VLMBackbone"]
