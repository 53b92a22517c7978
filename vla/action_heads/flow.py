"""pi0-style flow matching: an action expert that attends to the VLM prefix tokens.

Black et al., "pi0" (arXiv 2410.24164). The action expert is a transformer over [state token,
H noisy action tokens]; in every layer its tokens attend jointly to themselves and to the
backbone's prefix tokens (image + instruction, projected to the expert's width), the way pi0's
expert reads the VLM's keys and values. Deviations, for this framework's separate-backbone
contract: the prefix is the backbone's last-layer tokens (the same at every expert layer) rather
than per-layer VLM keys/values, and flow time enters through adaLN (as in pi0.5) rather than
being mixed into each action token by an MLP. Training: Beta time sampling and the velocity
target (`flow_matching.py`); inference: Euler with a configurable number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vla.action_heads.bac import BlockCache, run_block
from vla.action_heads.base import TransformerHeadConfig, register_head
from vla.action_heads.blocks import KV
from vla.action_heads.dit import DiT
from vla.action_heads.flow_matching import FlowMatching, FlowMatchingConfig
from vla.action_heads.prefix import PrefixHead, memory_allowed


class ActionExpert(DiT):
    """Velocity field: x_t [B, H, D] + time [B] + prefix [B, L, C] (+ extra tokens [B, K, C]) -> [B, H, D].

    The same layers as `dit`'s DiT (action embedding, positions, timestep MLP, adaLN-Zero blocks,
    final layer); it differs in what it conditions on: the prefix in every layer's attention, not a
    cognition token.
    """

    def __init__(self, action_dim: int, horizon: int, n_extra: int, hidden: int, depth: int, heads: int,
                 mlp_ratio: float, dropout: float):
        super().__init__(action_dim, horizon, n_extra, hidden, depth, heads, mlp_ratio, dropout)
        self.t_embed.scale = 1000.0  # flow time t in [0, 1] -> DiT's timestep range

    def memory(self, prefix: Tensor, real: Tensor) -> list[KV]:
        """Every layer's keys/values of the prefix [B, L, C] (padding is masked at attention, not here)."""
        return [block.memory_kv(prefix) for block in self.blocks]

    def forward(self, x_t: Tensor, t: Tensor, memory: list[KV], real: Tensor, extra: Tensor,
                cache: BlockCache | None = None) -> Tensor:
        """memory: `self.memory(prefix)`; real: bool [B, L], False where the prefix token is padding."""
        h = x_t.shape[1]
        x = torch.cat([extra, self.action_in(x_t)], dim=1) + self.pos  # (B, K + H, C)
        c = self.t_embed(t)  # (B, C)
        allowed = memory_allowed(real, x.shape[1])  # (B, 1, K + H, L + K + H)
        for i, block in enumerate(self.blocks):
            x = run_block(cache, i, block, x, c, memory=memory[i], allowed=allowed)
        return self.final(x[:, -h:], c)  # (B, H, D)


@dataclass
class FlowHeadConfig(TransformerHeadConfig):
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)


class FlowHead(PrefixHead):
    def __init__(self, config: FlowHeadConfig, cond_dim: int, action_dim: int, state_dim: int):
        super().__init__(config, cond_dim, action_dim, state_dim)
        self.config: FlowHeadConfig = config
        self.net = ActionExpert(action_dim, config.horizon, self.n_extra_tokens, config.hidden, config.depth,
                                config.heads, config.mlp_ratio, config.dropout)
        self.process = FlowMatching(config.flow)

    def default_steps(self) -> int:
        return self.config.flow.num_steps


FlowHeadConfig.head_class = FlowHead
register_head("flow")(FlowHeadConfig)
