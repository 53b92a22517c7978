"""Action heads behind one interface; importing this package registers the built-in heads."""

from vla.action_heads.ar import ARHead, ARHeadConfig
from vla.action_heads.base import (
    ActionHead,
    HeadConfig,
    TransformerHeadConfig,
    build_head,
    head_config_class,
    register_head,
)
from vla.action_heads.dit import DiTHead, DiTHeadConfig
from vla.action_heads.dita import DitaHead, DitaHeadConfig
from vla.action_heads.flow import FlowHead, FlowHeadConfig
from vla.action_heads.hybrid import HybridHead, HybridHeadConfig
from vla.action_heads.latent import LatentHead, LatentHeadConfig

__all__ = ["ActionHead", "HeadConfig", "TransformerHeadConfig", "build_head", "head_config_class", "register_head",
           "ARHead", "ARHeadConfig", "DiTHead", "DiTHeadConfig", "DitaHead", "DitaHeadConfig", "FlowHead",
           "FlowHeadConfig", "HybridHead", "HybridHeadConfig", "LatentHead", "LatentHeadConfig"]
