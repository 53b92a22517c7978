"""UniVLA: the backbone's LLM predicts latent-action tokens; a small decoder per embodiment turns them into actions.

Bu et al., "UniVLA: Learning to Act Anywhere with Task-centric Latent Actions" (RSS 2025, arXiv 2505.06111; code
OpenDriveLab/UniVLA). A latent action model (vla.latent) labels every frame, action-free video included, with K codes
of a codebook of C (`latent_codes` [K] per sample). After the observation prefix (images, instruction, cognition
token; encoded once, read through its cached keys/values) the backbone's own LLM writes them as tokens of C new
vocabulary slots:

    [observation prefix] [state token, only with use_proprio] z_0 z_1 ... z_{K-1}

- Latent tokens. The machinery of the token heads (`tokens.py`: reserved slots in the LLM's vocabulary, teacher
  forcing in one pass, greedy or temperature decoding over a persistent KV cache, logits restricted to the slots),
  without an action tokenizer: the codes mean the same for every robot, so cross-embodiment mixtures (and action-free
  video) train one LLM.
- Action decoders. One small module per embodiment (`decoders`, an nn.ModuleDict by name): H learned queries attend
  to the LLM's last-layer hidden states at the K latent tokens, the observation's backbone tokens (its padding
  masked) and, with `decoder_state`, the normalised state, through `decoder_depth` pre-norm transformer blocks; an
  MLP maps each query to one action of the padded width [H, D_max]. A new robot gets a new decoder (train.init_from
  on its demos adds one and keeps the others), not a new policy.
- Training: loss = CE over the K latent tokens of every sample (teacher forcing) + `action_weight` * the masked MSE
  of the decoder's chunk on the samples that have actions (action-free samples: valid all False, so they add only
  cross-entropy). The decoders read the hidden states of the labelled codes, and their gradient reaches the LLM.
- Inference: decode K codes (greedy unless `temperature` > 0), run them once more through the LLM in one pass for
  their hidden states (as training reads them), then each sample's embodiment's decoder.

Deviations: UniVLA's decoder pools the visual embeddings and the latent tokens with two attention-pooling (MAP)
blocks into one vector and projects it to the whole chunk; here H queries attend to both (and the state) and each
gives one action. Its LLM also reads the latent actions of the previous step (history) and its visual tokens are
the vision encoder's; here the prompt is the backbone's (no history) and the decoder reads the whole prefix's last
hidden states. No tanh on the output: chunks are clipped to `action_clip` as other heads'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.action_heads.base import masked_mse, register_head
from vla.action_heads.blocks import DiTBlock
from vla.action_heads.prefix import memory_allowed
from vla.action_heads.tokens import VocabularyHead, VocabularyHeadConfig
from vla.types import Cond

if TYPE_CHECKING:
    from vla.latent.labels import LatentLabels


@dataclass
class LatentHeadConfig(VocabularyHeadConfig):
    codebook_size: int = 16  # C: latent-action codes, new tokens of the LLM's vocabulary (the labels' codebook_size)
    latent_tokens: int = 4  # K: latent tokens per observation (the labels' tokens_per_frame)
    # embodiments with an action decoder; vla-train adds every dataset embodiment that has actions (empty: those)
    decoders: list[str] = field(default_factory=list)
    decoder_width: int = 256
    decoder_depth: int = 2  # transformer blocks of the decoder's queries
    decoder_heads: int = 4
    decoder_state: bool = True  # the decoder reads the normalised state (one token)
    action_weight: float = 1.0  # loss = latent CE + action_weight * action MSE
    # the LLM predicts the codes from the observation alone (UniVLA's VLM takes no state): the codes are
    # embodiment-agnostic, and action-free video has no state
    use_proprio: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in (("codebook_size", self.codebook_size), ("latent_tokens", self.latent_tokens),
                            ("decoder_width", self.decoder_width), ("decoder_depth", self.decoder_depth),
                            ("decoder_heads", self.decoder_heads)):
            if value < 1:
                raise ValueError(f"head.{name} must be >= 1; got {value}")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"head.decoder_width={self.decoder_width} must be divisible by head.decoder_heads="
                             f"{self.decoder_heads}")
        if not self.action_weight >= 0:
            raise ValueError(f"head.action_weight must be >= 0; got {self.action_weight}")
        bad = [name for name in self.decoders if not name or "." in name]
        if bad or len(set(self.decoders)) != len(self.decoders):
            raise ValueError(f"head.decoders must be distinct embodiment names without dots; got {self.decoders} "
                             f"(rename an embodiment with --data.embodiment)")

    @property
    def num_slots(self) -> int:
        return self.codebook_size

    @property
    def reads_latent_codes(self) -> bool:
        return True

    @property
    def embodiment_parts(self) -> list[str]:
        return list(self.decoders)

    def with_embodiment_parts(self, names: Iterable[str]) -> LatentHeadConfig:
        return replace(self, decoders=sorted({*self.decoders, *names}))

    def check_labels(self, labels: LatentLabels, dataset: str) -> None:
        """A ValueError naming both when a dataset's latent-action labels are of another codebook or token count."""
        theirs = (labels.codebook_size, labels.tokens_per_frame)
        if theirs != (self.codebook_size, self.latent_tokens):
            raise ValueError(f"{dataset} is labelled with {theirs[1]} latent tokens per frame from a codebook of "
                             f"{theirs[0]} (latent action model {labels.lam}); the latent head predicts "
                             f"{self.latent_tokens} tokens of {self.codebook_size} codes: set "
                             f"--model.head.latent_tokens {theirs[1]} --model.head.codebook_size {theirs[0]}")


class LatentActionDecoder(nn.Module):
    """One embodiment's action decoder: (latent hidden states [B, K, C], backbone tokens [B, L, C] with their mask
    [B, L], normalised state [B, S] or None) -> normalised padded chunk [B, H, D]."""

    def __init__(self, cond_dim: int, state_dim: int, action_dim: int, horizon: int, width: int, depth: int,
                 heads: int, use_state: bool):
        super().__init__()
        self.memory_in = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, width))  # LLM width -> width
        self.kinds = nn.Parameter(torch.randn(3, width) * 0.02)  # added to latent / observation / state tokens
        self.state_in = nn.Linear(state_dim, width) if use_state else None
        self.queries = nn.Parameter(torch.randn(horizon, width) * 0.02)  # one per action of the chunk
        self.blocks = nn.ModuleList([DiTBlock(width, heads, adaln=False) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(approximate="tanh"),
                                 nn.Linear(width, action_dim))

    def forward(self, latent: Tensor, tokens: Tensor, token_mask: Tensor, state: Tensor | None) -> Tensor:
        dtype = self.queries.dtype
        memory = [self.memory_in(latent.to(dtype)) + self.kinds[0], self.memory_in(tokens.to(dtype)) + self.kinds[1]]
        real = [torch.ones(latent.shape[:2], dtype=torch.bool, device=latent.device), token_mask.bool()]
        if self.state_in is not None:
            memory.append((self.state_in(state.to(dtype)) + self.kinds[2])[:, None])
            real.append(real[0][:, :1])
        memory, real = torch.cat(memory, 1), torch.cat(real, 1)  # (B, M, width), (B, M)
        x = self.queries.expand(latent.shape[0], -1, -1)
        allowed = memory_allowed(real, x.shape[1])  # the queries see every real memory token and each other
        for block in self.blocks:
            x = block(x, memory=block.memory_kv(memory), allowed=allowed)
        return self.out(x)


class LatentHead(VocabularyHead):
    """Latent-action tokens from the backbone's LLM, decoded to each embodiment's actions (module docstring)."""

    batch_inputs = ("latent_codes",)
    trains_without_actions = True

    def __init__(self, config: LatentHeadConfig, cond_dim: int, action_dim: int, state_dim: int, backbone):
        super().__init__(config, cond_dim, action_dim, state_dim, backbone)
        self.config: LatentHeadConfig = config
        self.decoders = nn.ModuleDict({
            name: LatentActionDecoder(cond_dim, state_dim, action_dim, config.horizon, config.decoder_width,
                                      config.decoder_depth, config.decoder_heads, config.decoder_state)
            for name in config.decoders})

    @property
    def max_tokens(self) -> int:
        return self.config.latent_tokens

    # ---- training ------------------------------------------------------------------------------------

    def loss(self, cond: Cond, actions: Tensor, valid: Tensor, latent_codes: Tensor) -> dict[str, Tensor]:
        """loss = latent_loss + action_weight * action_loss; also each term and the latent tokens' accuracy.

        actions, valid: [B, H, D] (a sample without actions has valid all False); latent_codes: int [B, K]."""
        codes = self.check_codes(latent_codes, actions.shape[0]).to(actions.device)
        _, vocabulary = self.prefix(cond)
        hidden = self.hidden_states(cond, codes)  # (B, 1 + K, C): the first predicts z_0, then one per code
        logits = self.slot_logits(vocabulary, hidden[:, :-1])  # (B, K, codebook_size)
        latent_loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        accuracy = (logits.argmax(-1) == codes).float().mean()
        rows = valid.flatten(1).any(1)  # (B,) samples with actions
        chunks = self.decode_chunks(cond, hidden[:, 1:], rows, training=True)
        action_loss = masked_mse(chunks, actions, valid)
        return {"loss": latent_loss + self.config.action_weight * action_loss, "latent_loss": latent_loss.detach(),
                "action_loss": action_loss.detach(), "token_accuracy": accuracy.detach()}

    def check_codes(self, codes: Tensor, batch: int) -> Tensor:
        """latent_codes as long [B, K]; a ValueError naming the shape or range that does not fit the head."""
        k, c = self.config.latent_tokens, self.config.codebook_size
        if codes.is_floating_point() or tuple(codes.shape) != (batch, k):
            raise ValueError(f"latent_codes must be integers [B, K] = [{batch}, {k}] (head.latent_tokens); got "
                             f"{codes.dtype} {list(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= c):
            raise ValueError(f"latent_codes must lie in 0..{c - 1} (head.codebook_size={c}); got "
                             f"{int(codes.min())}..{int(codes.max())}")
        return codes.long()

    # ---- decoders ------------------------------------------------------------------------------------

    def decode_chunks(self, cond: Cond, latent: Tensor, rows: Tensor | None = None, training: bool = False) -> Tensor:
        """Chunks [B, H, D] from the latent tokens' hidden states [B, K, C], each sample by its embodiment's decoder
        (`cond.embodiment`); rows: bool [B], decode only these (the others stay zero; default all)."""
        names = self.embodiments(cond)
        rows = torch.ones(len(names), dtype=torch.bool) if rows is None else rows.cpu()
        groups: dict[str, list[int]] = {}
        for index, (name, used) in enumerate(zip(names, rows.tolist(), strict=True)):
            if used:
                groups.setdefault(name, []).append(index)
        self.check_decoders(groups, training)
        out = latent.new_zeros(latent.shape[0], self.config.horizon, self.action_dim, dtype=self.decoder_dtype())
        backbone, state = cond.backbone, cond.proprio
        for name, indices in groups.items():
            index = torch.tensor(indices, device=latent.device)
            chunk = self.decoders[name](latent[index], backbone.tokens[index], backbone.token_mask[index], state[index])
            out = out.index_copy(0, index, chunk.to(out.dtype))
        if training:  # every decoder in the graph, so DDP finds a gradient for each (zero for those unused here)
            unused = [p for name, d in self.decoders.items() if name not in groups for p in d.parameters()]
            out = out + sum(p.sum() for p in unused) * 0.0
        return out

    @staticmethod
    def embodiments(cond: Cond) -> list[str]:
        """The B samples' embodiment names; a ValueError when the caller did not give one per sample."""
        batch = cond.proprio.shape[0]
        if len(cond.embodiment) != batch:
            raise ValueError(f"the latent head picks each sample's action decoder by its embodiment; cond.embodiment "
                             f"has {len(cond.embodiment)} names for {batch} samples (VLAPolicy.encode sets them)")
        return cond.embodiment

    def check_decoders(self, names: Iterable[str], training: bool) -> None:
        """A ValueError naming the embodiments among `names` without an action decoder, and those with one."""
        unknown = sorted(set(names) - set(self.decoders))
        if not unknown:
            return
        known = sorted(self.decoders)
        if training:
            raise ValueError(f"samples of embodiment(s) {unknown} have actions, but the latent head has action "
                             f"decoders only for {known}: list them in model.head.decoders (vla-train adds every "
                             f"dataset embodiment that has actions)")
        raise ValueError(f"the latent head has no action decoder for embodiment(s) {unknown}; it has decoders for "
                         f"{known}. A new robot needs a decoder of its own: fine-tune on its demos with "
                         f"train.init_from, which adds one")

    def decoder_dtype(self) -> torch.dtype:
        first = next(iter(self.decoders.values()), None)
        return first.queries.dtype if first is not None else torch.float32

    # ---- inference -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, cond: Cond, generator: torch.Generator | None = None, num_steps: int | None = None,
               bac: bool = False, temperature: float | None = None, kv_cache: bool = True, **options) -> Tensor:
        """[B, H, D] normalised chunks: K latent codes decoded (greedy unless temperature > 0; default
        head.temperature; kv_cache=False recomputes the suffix at each token, a reference), then each sample's
        embodiment's decoder. num_steps is ignored; bac and real-time-chunking prefixes are refused."""
        self.block_cache(num_steps, bac)
        if options.get("prefix") is not None:
            raise ValueError("real-time chunking inpaints a denoised chunk; the latent head decodes latent tokens and "
                             "cannot take a prefix (turn real-time chunking off for this policy)")
        self.check_decoders(self.embodiments(cond), training=False)  # before decoding
        temperature = self.config.temperature if temperature is None else temperature
        codes = self.decode_codes(cond, generator, temperature, kv_cache)
        latent = self.hidden_states(cond, codes, opened=self.start(cond, scratch=True))[:, 1:]  # (B, K, C)
        chunks = self.decode_chunks(cond, latent)
        return chunks if self.action_clip is None else chunks.clamp(-self.action_clip, self.action_clip)

    def decode_codes(self, cond: Cond, generator: torch.Generator | None = None, temperature: float = 0.0,
                     kv_cache: bool = True) -> Tensor:
        """The K latent codes [B, K] (long) the LLM writes for each observation."""
        codes, _ = self.decode_ids(cond, generator, temperature, kv_cache)
        return codes


LatentHeadConfig.head_class = LatentHead
register_head("latent")(LatentHeadConfig)
