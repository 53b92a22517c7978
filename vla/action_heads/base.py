"""The action-head interface and its registry.

A head owns only its network. It is trained with `loss(cond, actions, pad)` and queried with
`sample(cond)` (or `sample_n(cond, n)` for n chunks per observation); both work in the normalised,
padded action space [B, H, D_max]. A new head is one module: a config dataclass registered under a
name with `@register_head`, and an `ActionHead` subclass that the config's `head_class` names.

Token heads (`ar`) also need the backbone itself (to add action tokens to its vocabulary: the config's
`uses_vocabulary`) and a fitted action tokenizer (`tokenizer_config`): `build_head` hands them the
backbone, training fits the tokenizer and `set_action_tokenizer` attaches it, and the checkpoint keeps it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import draccus
import torch
from torch import Tensor, nn

from vla.registry import choice_class
from vla.types import Cond

if TYPE_CHECKING:
    from vla.tokenizers import ActionTokenizer, TokenizerConfig


@dataclass
class HeadConfig(draccus.ChoiceRegistry):
    """Base of every head config; `type` in YAML / `--model.head.type` picks the subclass."""

    horizon: int = 8  # H: actions per predicted chunk

    @classmethod
    def default_choice_name(cls) -> str:
        return "dit"  # lets `--model.head.hidden=64` work without also passing `--model.head.type`

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    @property
    def reads_language_cache(self) -> bool:
        """The head runs its own tokens through the backbone's LLM (so that LLM must train); see ActionHead."""
        return False

    @property
    def uses_vocabulary(self) -> bool:
        """The head reads and writes tokens of the backbone LLM's vocabulary: the backbone keeps its LM head and
        `build_head` passes the backbone to the head (which adds its action tokens)."""
        return False

    @property
    def reads_latent_codes(self) -> bool:
        """The head trains on latent-action labels (vla.latent.labels): training reads every dataset's labels and
        its samples carry latent_codes [K]."""
        return False

    @property
    def embodiment_parts(self) -> list[str]:
        """Embodiments the head has a part of its own for (the latent head's action decoders); empty for heads that
        every embodiment shares whole."""
        return []

    def with_embodiment_parts(self, names: Iterable[str]) -> HeadConfig:
        """This config with a part for each embodiment in `names` too (training adds the datasets' embodiments
        that have actions, init_from keeps the checkpoint's); itself for heads without such parts."""
        return self

    @property
    def tokenizer_config(self) -> TokenizerConfig | None:
        """The action tokenizer the head predicts tokens of (fit on the training data before training and saved
        in the checkpoint's action_tokenizer/); None for heads without one."""
        return None


@dataclass
class TransformerHeadConfig(HeadConfig):
    """Settings every transformer-denoiser head (dit, dita, flow) shares; not registered itself."""

    hidden: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    use_proprio: bool = True  # add a state token to the denoiser's input
    noise_samples_per_cond: int = 4  # CogACT's "repeated diffusion steps": (noise, t) draws per backbone pass

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"head.hidden={self.hidden} must be divisible by head.heads={self.heads}")
        if self.noise_samples_per_cond < 1:
            raise ValueError(f"head.noise_samples_per_cond must be >= 1; got {self.noise_samples_per_cond}")
        if self.horizon < 1:
            raise ValueError(f"head.horizon must be >= 1; got {self.horizon}")


def build_head(config: HeadConfig, cond_dim: int, action_dim: int, state_dim: int,
               action_clip: float | None = 1.0, backbone: nn.Module | None = None) -> ActionHead:
    """Instantiate the head a registered config describes (its class is `config.head_class`).

    action_clip: sampled normalised actions are clipped to [-action_clip, action_clip]; None: no clip
    (see `ActionHead.action_clip`). backbone: the `VLMBackbone` (built with its LM head), passed to heads whose
    config `uses_vocabulary` (required for them, ignored for the others)."""
    head_class = getattr(type(config), "head_class", None)
    if head_class is None:
        raise TypeError(f"{type(config).__name__} has no `head_class`; set it to its ActionHead subclass")
    extra = {}
    if config.uses_vocabulary:
        if backbone is None:
            raise ValueError(f"the {config.type} head predicts tokens of the backbone's vocabulary: build it with "
                             f"build_head(..., backbone=VLMBackbone(cfg, lm_head=True)) (VLAPolicy does this)")
        extra["backbone"] = backbone
    head = head_class(config, cond_dim=cond_dim, action_dim=action_dim, state_dim=state_dim, **extra)
    head.action_clip = action_clip
    return head


def register_head(name: str):
    """Class decorator registering a HeadConfig subclass under `name`."""
    return HeadConfig.register_subclass(name)


def head_config_class(name: str) -> type[HeadConfig]:
    """Look up a registered head config by name, suggesting the closest on a typo."""
    return choice_class(HeadConfig, name, "action head")


class ActionHead(nn.Module, ABC):
    """Maps backbone conditioning to a chunk of normalised actions [B, H, D].

    action_clip: the range [-action_clip, action_clip] samples are clipped to (None: no clip). It follows the
    normalisation, not the weights: 1 for quantile (targets lie in [-1, 1]), wider for zscore; the policy sets it.
    """

    # batch fields besides the actions that `loss` takes as keyword arguments (VLAPolicy.forward passes them)
    batch_inputs: ClassVar[tuple[str, ...]] = ()
    # the head learns from samples without actions (action-free video: action_mask all False), e.g. latent actions
    trains_without_actions: ClassVar[bool] = False

    def __init__(self, config: HeadConfig, action_dim: int):
        super().__init__()
        self.config = config
        self.action_dim = action_dim
        self.action_clip: float | None = 1.0

    @property
    def action_tokenizer(self) -> ActionTokenizer | None:
        """The fitted action tokenizer of a token head (None until attached, and for heads without one)."""
        return None

    def set_action_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        """Attach a fitted tokenizer (token heads check that it fits them)."""
        raise TypeError(f"the {self.config.type} head predicts no tokens and takes no action tokenizer")

    @property
    def reads_language_cache(self) -> bool:
        """The head runs its own tokens through the backbone's LLM after the observation prefix, so it needs
        `cond.backbone.past_key_values` (the policy asks the backbone for it)."""
        return self.config.reads_language_cache

    @abstractmethod
    def loss(self, cond: Cond, actions: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Training losses.

        actions: [B, H, D] normalised, padded actions.
        valid: bool [B, H, D]; False for steps past the episode end and for padded dims.
        A head with `batch_inputs` also takes those batch fields as keyword arguments.
        Returns a dict whose "loss" entry is the scalar to minimise.
        """

    @abstractmethod
    def sample(self, cond: Cond, generator: torch.Generator | None = None, **options) -> Tensor:
        """Sample one chunk per batch element: [B, H, D] normalised actions."""

    def sample_n(self, cond: Cond, n: int, generator: torch.Generator | None = None, **options) -> Tensor:
        """n chunks per batch element, [B, n, H, D], drawn together as one batch of B * n (the backbone's
        output is repeated, not recomputed): independent draws for stochastic sampling, n equal chunks for a
        deterministic one (e.g. greedy decoding)."""
        if n < 1:
            raise ValueError(f"sample_n needs n >= 1; got {n}")
        chunks = self.sample(cond.repeat_interleave(n), generator=generator, **options)  # (B * n, H, D)
        return chunks.view(-1, n, *chunks.shape[1:])

    def default_steps(self) -> int | None:
        """Sampling steps when the caller gives none (None: the head does not sample iteratively)."""
        return None


def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the entries where valid is True. pred/target/valid: [B, H, D]."""
    weight = valid.to(pred.dtype)
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


NoisyBatch = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]  # actions -> (noisy, t, target)


def denoising_loss(noisy_batch: NoisyBatch, predict: Callable[[Tensor, Tensor], Tensor], actions: Tensor,
                   valid: Tensor, k: int) -> dict[str, Tensor]:
    """Masked MSE of a denoiser over k (noise, t) draws per condition.

    actions, valid: [B, H, D]. noisy_batch draws (noisy [B*k, H, D], t [B*k], target [B*k, H, D]);
    predict(noisy, t) runs the network on conditions already repeated k times (repeat_interleave).
    """
    actions, valid = actions.repeat_interleave(k, dim=0), valid.repeat_interleave(k, dim=0)
    noisy, t, target = noisy_batch(actions)
    return {"loss": masked_mse(predict(noisy, t), target, valid)}
