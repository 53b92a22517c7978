"""Action tokenizers behind one interface; importing this package registers the built-in ones.

Inside `vla/` on purpose: a top-level package named `tokenizers` would shadow HuggingFace `tokenizers`.
"""

from vla.tokenizers.base import (
    ActionTokenizer,
    TokenizerConfig,
    build_tokenizer,
    register_tokenizer,
    tokenizer_config_class,
)
from vla.tokenizers.bins import BinsTokenizer, BinsTokenizerConfig
from vla.tokenizers.fast import FastTokenizer, FastTokenizerConfig
from vla.tokenizers.vq import VQTokenizer, VQTokenizerConfig

__all__ = ["ActionTokenizer", "TokenizerConfig", "build_tokenizer", "register_tokenizer", "tokenizer_config_class",
           "BinsTokenizer", "BinsTokenizerConfig", "FastTokenizer", "FastTokenizerConfig", "VQTokenizer",
           "VQTokenizerConfig"]
