"""The frozen instruction embedding stage 1 of the latent action model is given: instructions (B str) -> float32
[B, dim].

`text`:
- `hashed` (default): every lower-cased word (runs of letters and digits) gets a fixed random vector, N(0, 1/dim)
  drawn from a generator seeded by sha256 of the word (so the same word has the same vector in every process and
  on every machine), and an instruction is the mean of its words' vectors. No weights, works for instructions never
  seen; it tells instructions apart by their words, which is all stage 1 needs to tell the model what the task is.
- a hub id or folder of a transformers text encoder (`AutoTokenizer` + `AutoModel`; the encoder half of an
  encoder-decoder such as T5, UniVLA's choice): the mean of its last hidden state over the instruction's tokens.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from vla.latent.features import weights_digest

HASHED = "hashed"
WORD = re.compile(r"[a-z0-9]+")


def has_words(text: object) -> bool:
    """Whether `text` is an instruction: a str with at least one word."""
    return isinstance(text, str) and WORD.search(text.lower()) is not None


def check_instructions(instructions: list[str] | None, batch: int, where: str = "") -> list[str]:
    """The instructions, after checking there is a non-empty one for each of `batch` samples."""
    if instructions is None or len(instructions) != batch:
        count = "none" if instructions is None else len(instructions)
        raise ValueError(f"{where}the latent action model needs an instruction per frame pair: got {count} for "
                         f"{batch} pairs")
    for i, text in enumerate(instructions):
        if not has_words(text):
            raise ValueError(f"{where}pair {i} has no instruction ({text!r}); every frame pair needs its task's "
                             f"instruction (the dataset's task)")
    return list(instructions)


class TextEncoder(nn.Module, ABC):
    """Frozen instructions -> [B, dim]; `fingerprint()` identifies the embedding."""

    dim: int

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of what the embedding is (settings and weights), saved with a model fit on it."""

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)


class HashedWords(TextEncoder):
    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"text_dim must be >= 1; got {dim}")
        self.dim = dim
        self._vectors: dict[str, Tensor] = {}

    def word(self, word: str) -> Tensor:
        if word not in self._vectors:
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") >> 1
            generator = torch.Generator().manual_seed(seed)
            self._vectors[word] = torch.randn(self.dim, generator=generator) / self.dim ** 0.5
        return self._vectors[word]

    def forward(self, instructions: list[str]) -> Tensor:
        rows = [torch.stack([self.word(w) for w in WORD.findall(text.lower())]).mean(0) for text in instructions]
        return torch.stack(rows)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{HASHED}:{self.dim}".encode()).hexdigest()


class PretrainedText(TextEncoder):
    def __init__(self, source: str):
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.source = source
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.requires_grad_(False).eval()
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)

    @torch.no_grad()
    def forward(self, instructions: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(instructions), return_tensors="pt", padding=True).to(device)
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float()

    def fingerprint(self) -> str:
        return weights_digest(self.model, "pretrained")  # the weights, not where they were loaded from


def build_text_encoder(text: str, dim: int) -> TextEncoder:
    """`hashed` words of `dim` numbers, or the transformers text encoder at the hub id / folder `text`."""
    return HashedWords(dim) if text == HASHED else PretrainedText(text)
