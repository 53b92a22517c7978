"""Action heads behind one interface; importing this package registers the built-in heads."""

from vla.action_heads.base import ActionHead, HeadConfig, build_head, head_config_class, register_head
from vla.action_heads.dit import DiTHead, DiTHeadConfig

__all__ = ["ActionHead", "HeadConfig", "build_head", "head_config_class", "register_head", "DiTHead", "DiTHeadConfig"]
