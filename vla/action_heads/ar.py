"""Autoregressive action tokens from the backbone's own language model (RT-2 / OpenVLA; FAST; VQ-VLA).

Brohan et al., "RT-2" (arXiv 2307.15818); Kim et al., "OpenVLA" (arXiv 2406.09246); Pertsch et al.,
"FAST" (arXiv 2501.09747); Wang et al., "VQ-VLA" (arXiv 2507.01016). The VLM reads the observation and
continues with the action chunk as tokens of an action tokenizer (`head.tokenizer`: `bins`, 256 uniform
bins per dimension, H * D tokens; `fast`, DCT + BPE, variable length, ended by an END token; `vq`, a
residual-VQ autoencoder's codes, T' * levels tokens, usually fit beforehand by `vla-tokenizer fit` and
loaded with `head.tokenizer_path`). Training is teacher forcing with
cross-entropy over the action tokens only; inference decodes greedily (or samples with
`temperature` > 0) one token per step over a persistent KV cache, constrained to the action
vocabulary, and the tokenizer turns the ids back into a normalised chunk. Shared machinery
(vocabulary, state token, teacher forcing, decoding): `tokens.py`.

Deviations: the cross-entropy is over the action tokens' logits only, not the whole vocabulary (the
same distribution decoding is constrained to; text logits never enter); the observation prompt is
the backbone's (images, instruction, cognition token), not OpenVLA's "What action should the robot
take to ...?"; the state enters as one projected token, as in this framework's other heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vla.action_heads.base import register_head
from vla.action_heads.tokens import TokenHead, TokenHeadConfig
from vla.types import Cond


@dataclass
class ARHeadConfig(TokenHeadConfig):
    pass


class ARHead(TokenHead):
    """Action chunks [B, H, D] as action-token sequences written by the backbone's LLM."""

    def loss(self, cond: Cond, actions: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Mean cross-entropy over every real target token of the batch (END included); also token accuracy."""
        ids, real = self.targets(actions, valid)  # (B, T)
        logits = self.logits(cond, ids)  # (B, T, num_slots)
        loss = F.cross_entropy(logits[real], ids[real])
        accuracy = (logits[real].argmax(-1) == ids[real]).float().mean()
        return {"loss": loss, "token_accuracy": accuracy.detach()}

    @torch.no_grad()
    def sample(self, cond: Cond, generator: torch.Generator | None = None, num_steps: int | None = None,
               bac: bool = False, temperature: float | None = None, kv_cache: bool = True, **options) -> Tensor:
        """[B, H, D] normalised chunks decoded token by token (greedy unless temperature > 0; default:
        head.temperature). num_steps is ignored (decoding runs until the chunk is complete: H * D tokens for
        bins, up to END for fast); bac and real-time-chunking prefixes do not apply to token decoding."""
        self.block_cache(num_steps, bac)
        if options.get("prefix") is not None:
            raise ValueError("real-time chunking inpaints a denoised chunk; the ar head decodes tokens and cannot "
                             "take a prefix (turn real-time chunking off for this policy)")
        temperature = self.config.temperature if temperature is None else temperature
        ids, _ = self.decode_ids(cond, generator, temperature, kv_cache)
        return self.ids_to_chunks(ids)


ARHeadConfig.head_class = ARHead
register_head("ar")(ARHeadConfig)
