"""HybridVLA: one LLM both denoises a continuous action chunk and writes it as action tokens.

Liu et al., "HybridVLA" (arXiv 2503.10631; code PKU-HMI-Lab/Hybrid-VLA). After the observation prefix
(images, instruction, cognition token; encoded once, read through its cached keys/values) the backbone's
own LLM runs

    [state] [BOD] [timestep] [x_t,0 ... x_t,H-1] [EOD] a_0 a_1 ... a_{T-1} [END]
            `--------- diffusion span ----------'  `------ AR action tokens ------'

- Diffusion span. BOD / EOD are two marker tokens of the LLM's vocabulary (reserved with the action tokens,
  in one `add_action_tokens` call, and never decoded). Between them, the timestep token and one token per
  noisy action (dita shared's `LLMDenoiser`: timestep MLP, action projection). The LLM's last-layer hidden
  states at the action tokens go through a zero-initialised linear layer to the predicted noise
  (DDPM epsilon-prediction, diffusers' schedulers as in `diffusion.py`: 100 training steps, squaredcos_cap_v2,
  DDIM with `diffusion.num_inference_steps`, 5 by default as in the paper's code).
- AR tokens. The action tokenizer's ids (`head.tokenizer`, bins by default as in the paper), written by the
  LLM's LM head restricted to the action tokens, as the `ar` head does (`tokens.py`: teacher forcing, decoding
  over a persistent KV cache).
- Masks. The whole suffix is causal, so the diffusion span never sees the AR tokens: the teacher-forced AR
  ids are the clean chunk, and the paper puts the span first so that they cannot leak into the denoiser.
  Clean continuous actions never enter the sequence. `ar_context: noisy` (default, the paper's order and
  causal mask): the AR tokens attend to the noisy span, and the first id is predicted at EOD. `none`: the
  span keeps its positions but is hidden from the AR tokens (`Continuation.append(visible=False)`), and the
  first id is predicted at the state token, so the AR branch reads only the observation and state.
- Training: L = L_diffusion (masked MSE on the noise) + `ar_loss_weight` * L_CE (mean over the real AR ids),
  over `noise_samples_per_cond` (noise, t) draws per observation (4: REPEATED_DIFFUSION_STEPS in the paper's
  scripts/train.sh).
- Inference. DDIM runs the span after the cached prefix at every step (the prefix's scratch `Continuation`,
  rewound each step: only the span's H + 4 tokens run and their keys/values overwrite the last step's in one
  preallocated buffer; the prefix is never recomputed nor copied again). The AR tokens are decoded greedily after the
  span of the sampler's first step: its starting noise (the paper's code also feeds the sampler's starting
  noise to the AR pass) at its first timestep (where the paper's code draws a random one), one token per
  step over that continuation's KV cache. No fork or copy of a continuation is needed: each denoising step and
  then the AR decoding rewind the same one.
- Collaborative ensemble. The AR branch's confidence is the mean probability of its chosen ids (up to END
  for FAST). At or above `confidence_threshold` (0.96: the paper's theta; its code thresholds the sum of
  six token probabilities at 5.8, a mean of 0.967) the chunk is the average of the diffusion and the
  decoded AR chunks, otherwise the diffusion chunk. `ensemble_stats()` reports the share averaged and
  `last_ensemble` each chunk's confidence and branch. `output: diffusion | ar` returns one branch alone.

Deviations: the AR tokens cover the whole chunk (H * D ids with bins), where the paper's AR branch predicts
only the current action (7 ids; its RLBench script also diffuses one action), and the ensemble averages whole
chunks; token probabilities are over the
action tokens (the distribution decoding is restricted to), not the whole vocabulary; no classifier-free
guidance (the paper samples with CFG 1.5); the state token comes before BOD (the paper's code puts it just
after); the observation prompt is the backbone's, not "What action should the robot take to ...?".
With `ar_context: noisy`, at small t the noisy span nearly equals the clean chunk, so part of the AR
training loss can be met by reading it (as in the paper); at inference the span is pure noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vla.action_heads.base import masked_mse, register_head
from vla.action_heads.diffusion import ActionDiffusion, DiffusionConfig
from vla.action_heads.dita import LLMDenoiser
from vla.action_heads.tokens import TokenHead, TokenHeadConfig
from vla.backbones.continuation import Continuation
from vla.types import Cond

AR_CONTEXTS = ("noisy", "none")
OUTPUTS = ("ensemble", "diffusion", "ar")


@dataclass
class HybridHeadConfig(TokenHeadConfig):
    # the diffusion branch; 5 DDIM steps by default (the paper's code; it reports about 4)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(num_inference_steps=5))
    ar_loss_weight: float = 1.0  # L = L_diffusion + ar_loss_weight * L_CE
    noise_samples_per_cond: int = 4  # (noise, t) draws per backbone pass (the paper's REPEATED_DIFFUSION_STEPS)
    confidence_threshold: float = 0.96  # mean AR token probability at or above which the two chunks are averaged
    ar_context: str = "noisy"  # noisy: AR tokens attend to the noisy span (the paper); none: it is hidden from them
    output: str = "ensemble"  # ensemble | diffusion | ar: what `sample` returns (overridable per call)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ar_context not in AR_CONTEXTS:
            raise ValueError(f"head.ar_context must be one of {AR_CONTEXTS}; got {self.ar_context!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"head.output must be one of {OUTPUTS}; got {self.output!r}")
        if not self.ar_loss_weight >= 0:
            raise ValueError(f"head.ar_loss_weight must be >= 0; got {self.ar_loss_weight}")
        if self.noise_samples_per_cond < 1:
            raise ValueError(f"head.noise_samples_per_cond must be >= 1; got {self.noise_samples_per_cond}")
        if not 0 <= self.confidence_threshold <= 1:
            raise ValueError(f"head.confidence_threshold is a mean token probability and must be in [0, 1]; got "
                             f"{self.confidence_threshold}")


def mean_confidence(ids: Tensor, probs: Tensor, end_id: int | None = None) -> Tensor:
    """Mean probability [B] of the decoded ids [B, T] (probs [B, T]): over every id, or, with an END id, over the
    ids up to and including each row's first END (what follows it is padding)."""
    if end_id is None:
        return probs.mean(1)
    is_end = ids == end_id
    last = torch.where(is_end.any(1), is_end.float().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))
    keep = (torch.arange(ids.shape[1], device=ids.device)[None] <= last[:, None]).to(probs.dtype)
    return (probs * keep).sum(1) / keep.sum(1)


def collaborative_ensemble(diffusion: Tensor, ar: Tensor, confidence: Tensor,
                           threshold: float) -> tuple[Tensor, Tensor]:
    """HybridVLA's collaborative action ensemble: (chunks [B, H, D], averaged bool [B]).

    Where the AR confidence [B] is >= threshold the chunk is the mean of the diffusion and AR chunks [B, H, D];
    elsewhere it is the diffusion chunk."""
    averaged = confidence >= threshold
    fused = torch.where(averaged[:, None, None], (diffusion + ar.to(diffusion.dtype)) / 2, diffusion)
    return fused, averaged


class HybridHead(TokenHead):
    """Action chunks [B, H, D] from the backbone's LLM by diffusion inside it and by AR tokens (module docstring)."""

    marker_tokens = 2  # BOD, EOD
    deterministic_when_greedy = False  # the diffusion branch draws its own noise

    def __init__(self, config: HybridHeadConfig, cond_dim: int, action_dim: int, state_dim: int, backbone):
        super().__init__(config, cond_dim, action_dim, state_dim, backbone)
        self.config: HybridHeadConfig = config
        self.denoiser = LLMDenoiser(action_dim, cond_dim, causal_actions=True)
        self.process = ActionDiffusion(config.diffusion)
        self.last_ensemble: dict[str, Tensor] | None = None  # the last ensemble's confidence [B] and averaged [B]
        self.reset_ensemble_stats()

    # ---- the suffix ----------------------------------------------------------------------------------

    def span(self, cond: Cond, noisy: Tensor, t: Tensor) -> Tensor:
        """The diffusion span [BOD, timestep, H noisy action tokens, EOD]: [B, H + 3, C] in the LLM's input space,
        for noisy actions [B, H, D] at times t [B]."""
        prefix, vocabulary = self.prefix(cond)
        markers = vocabulary.embed(self.marker_ids).to(prefix.dtype)  # (2, C): table rows, as the LLM reads them
        inner = (self.denoiser.embed(noisy, t) * prefix.input_scale).to(prefix.dtype)  # (B, 1 + H, C)
        ends = markers[None].expand(noisy.shape[0], -1, -1)
        return torch.cat([ends[:, :1], inner, ends[:, 1:]], dim=1)

    def open(self, cond: Cond, noisy: Tensor, t: Tensor) -> tuple[Continuation, Tensor, Tensor]:
        """Run [state] + the diffusion span after the prefix: (the continuation the AR tokens follow, the hidden
        state [B, C] predicting the first AR id, the predicted noise [B, H, D])."""
        prefix, _ = self.prefix(cond)
        continuation = prefix.scratch_continuation()  # sampling: one set of buffers for every step, rewritten
        span = self.span(cond, noisy, t)
        state = None
        if self.state_proj is not None:
            state = (self.state_proj(cond.proprio.to(self.state_proj.weight.dtype))[:, None] * prefix.input_scale)
            state = state.to(prefix.dtype)
        if self.config.ar_context == "noisy":
            hidden = continuation.append(span if state is None else torch.cat([state, span], dim=1))
            first = hidden[:, -1]  # EOD
        else:  # the span takes its positions, but the AR tokens never attend to it
            first = cond.backbone.cognition if state is None else continuation.append(state)[:, -1]
            hidden = continuation.append(span, visible=False)
        horizon = noisy.shape[1]
        return continuation, first, self.denoiser.project(hidden[:, -horizon - 1:-1])

    # ---- training ------------------------------------------------------------------------------------

    def loss(self, cond: Cond, actions: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """loss = diffusion_loss + ar_loss_weight * ar_loss over noise_samples_per_cond draws per observation;
        also each term and the AR token accuracy. actions, valid: [B, H, D]."""
        k = self.config.noise_samples_per_cond
        ids, real = self.targets(actions, valid)  # (B, T)
        cond, actions, valid = cond.repeat_interleave(k), actions.repeat_interleave(k, 0), valid.repeat_interleave(k, 0)
        ids, real = ids.repeat_interleave(k, 0), real.repeat_interleave(k, 0)
        noisy, t, target = self.process.noisy_batch(actions)
        continuation, first, prediction = self.open(cond, noisy, t)
        diffusion = masked_mse(prediction, target, valid)
        logits = self.logits(cond, ids, opened=(continuation, first))  # (B * k, T, num_slots)
        ar = F.cross_entropy(logits[real], ids[real])
        accuracy = (logits[real].argmax(-1) == ids[real]).float().mean()
        return {"loss": diffusion + self.config.ar_loss_weight * ar, "diffusion_loss": diffusion.detach(),
                "ar_loss": ar.detach(), "token_accuracy": accuracy.detach()}

    # ---- inference -----------------------------------------------------------------------------------

    def default_steps(self) -> int:
        return self.config.diffusion.num_inference_steps

    @torch.no_grad()
    def sample(self, cond: Cond, generator: torch.Generator | None = None, num_steps: int | None = None,
               bac: bool = False, temperature: float | None = None, kv_cache: bool = True, output: str | None = None,
               **options) -> Tensor:
        """[B, H, D] normalised chunks: the collaborative ensemble of a DDIM sample with num_steps steps (default:
        diffusion.num_inference_steps) and the decoded AR tokens (greedy unless temperature > 0; kv_cache=False
        recomputes the AR suffix at each token, a reference). output: ensemble | diffusion | ar (default
        head.output). Real-time-chunking prefixes and bac are refused."""
        self.block_cache(num_steps, bac)
        if options.get("prefix") is not None:
            raise ValueError("real-time chunking inpaints a denoised chunk; the hybrid head fuses it with decoded "
                             "tokens and cannot take a prefix (turn real-time chunking off for this policy)")
        output = output or self.config.output
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
        temperature = self.config.temperature if temperature is None else temperature
        dtype, device = self.denoiser.out.weight.dtype, cond.proprio.device
        shape = (cond.proprio.shape[0], self.config.horizon, self.action_dim)
        noise = self.process.initial_noise(shape, device, dtype, generator)
        diffusion = None
        if output != "ar":
            diffusion = self.process.sample(lambda x, t: self.open(cond, x, t)[2], shape, device, dtype, generator,
                                            num_steps or self.default_steps(), clip=self.action_clip, noise=noise)
            if output == "diffusion":
                return diffusion
        first_t = self.process.inference_timesteps(num_steps or self.default_steps(), device)[0].expand(shape[0])
        ids, probs = self.decode_ids(cond, generator, temperature, kv_cache,
                                     opener=lambda: self.open(cond, noise, first_t)[:2])
        ar = self.ids_to_chunks(ids).to(dtype)
        if output == "ar":
            return ar
        confidence = mean_confidence(ids, probs, self.end_id)
        chunks, averaged = collaborative_ensemble(diffusion, ar, confidence, self.config.confidence_threshold)
        self._record(confidence, averaged)
        return chunks

    # ---- which branch the ensemble took ---------------------------------------------------------------

    def _record(self, confidence: Tensor, averaged: Tensor) -> None:
        self.last_ensemble = {"confidence": confidence.detach().cpu(), "averaged": averaged.detach().cpu()}
        self._stats["chunks"] += averaged.numel()
        self._stats["averaged"] += int(averaged.sum())
        self._stats["confidence_sum"] += float(confidence.sum())

    def reset_ensemble_stats(self) -> None:
        """Start counting the ensemble's branches afresh (e.g. per evaluation)."""
        self._stats = {"chunks": 0, "averaged": 0, "confidence_sum": 0.0}

    def ensemble_stats(self) -> dict[str, float | int | None]:
        """Chunks fused since the last reset, how many were averaged (AR confident) and how many were the diffusion
        chunk alone, the share averaged and the mean AR confidence (None before any chunk); `output: diffusion`
        or `ar` chunks are not counted."""
        chunks, averaged = self._stats["chunks"], self._stats["averaged"]
        return {"chunks": chunks, "averaged": averaged, "diffusion_only": chunks - averaged,
                "share_averaged": averaged / chunks if chunks else None,
                "mean_confidence": self._stats["confidence_sum"] / chunks if chunks else None,
                "threshold": self.config.confidence_threshold}


HybridHeadConfig.head_class = HybridHead
register_head("hybrid")(HybridHeadConfig)
