"""VLAPolicy = VLM backbone + action head + per-embodiment normaliser.

The policy is where robot units meet the heads' normalised, padded space: `forward` normalises a
training batch and returns the head's losses; `predict` turns an Observation into an ActionChunk
in the embodiment's own units. `save_pretrained` / `from_pretrained` write and read a
self-contained checkpoint folder (see `vla/checkpoint.py` for the layout), `from_pretrained` also a
hub id at a revision and `push_to_hub` shares one (see `vla/hub.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vla.action_heads import build_head
from vla.backbones import VLMBackbone
from vla.config import ModelConfig
from vla.data.normalize import Normalizer
from vla.data.transforms import check_normalized
from vla.types import ActionChunk, Cond, Observation, validate_images


def sample_clip(mode: str, config: ModelConfig) -> float | None:
    """The range heads clip sampled normalised actions to: 1 for quantile (q01..q99 -> [-1, 1]), model.zscore_clip
    standard deviations for zscore (None = no clip when it is 0)."""
    return 1.0 if mode == "quantile" else (config.zscore_clip or None)


class VLAPolicy(nn.Module):
    def __init__(self, config: ModelConfig, normalizer: Normalizer, backbone: VLMBackbone | None = None):
        super().__init__()
        normalizer.check_passthrough(sample_clip(normalizer.mode, config))  # before the (slow) backbone is built
        self.config = config
        self.normalizer = normalizer
        # the VLM the backbone's weights came from (hub id or folder), recorded in checkpoints and their model card;
        # a policy loaded from a checkpoint keeps its original source (None when the checkpoint did not record it)
        self.backbone_source: str | None = config.backbone.pretrained
        self.backbone = (backbone if backbone is not None
                         else VLMBackbone(config.backbone, lm_head=config.head.uses_vocabulary))
        self.head = build_head(config.head, cond_dim=self.backbone.hidden_size, action_dim=config.max_action_dim,
                               state_dim=config.max_state_dim, action_clip=sample_clip(normalizer.mode, config),
                               backbone=self.backbone)

    @property
    def embodiments(self) -> list[str]:
        return sorted(self.normalizer.stats)

    def condition(self, images: Tensor, state: Tensor, instruction: list[str], embodiment: list[str],
                  image_mask: Tensor | None = None) -> Cond:
        """Backbone features plus normalised state, at inference. images: uint8 [B, N, H, W, 3]; state: [B, S] in
        robot units; image_mask: bool [B, N] (None: every slot is a camera)."""
        proprio = self.normalizer.normalize_state(state, embodiment).to(images.device)
        return self.encode(images, proprio, instruction, embodiment, image_mask)

    def encode(self, images: Tensor, proprio: Tensor, instruction: list[str], embodiment: list[str],
               image_mask: Tensor | None = None) -> Cond:
        """Backbone features of an observation whose state is already normalised and padded: proprio [B, S_max]."""
        validate_images(images)
        slots = len(self.config.cameras) * self.config.n_obs_steps
        expected = (slots, self.config.image_size, self.config.image_size, 3)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}] (cameras {self.config.cameras} x "
                             f"{self.config.n_obs_steps} history frames, oldest first); got {list(images.shape)}")
        self._check_tokenizer_embodiments(embodiment)
        if image_mask is not None and bool(image_mask.all()):
            image_mask = None  # every slot real: the unmasked path (the same computation)
        backbone = self.backbone(images, instruction, keep_cache=self.head.reads_language_cache,
                                 image_mask=None if image_mask is None else image_mask.to(images.device))
        return Cond(backbone=backbone, proprio=proprio, embodiment=list(embodiment))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Training losses for a normalised batch (vla.data.transforms; the data pipeline normalises, the policy
        does not): images uint8 [B, N, H, W, 3], image_mask bool [B, N], state [B, S_max] and actions
        [B, H, D_max] normalised and zero-padded, action_mask bool [B, D_max], action_is_pad bool [B, H],
        instruction list[str], embodiment list[str]; plus the fields the head's loss takes (`head.batch_inputs`,
        e.g. the latent head's latent_codes [B, K]). A sample of action-free data has no action dims (action_mask
        all False); only a head that `trains_without_actions` takes one.
        """
        target = check_normalized(batch)
        if not torch.isfinite(target).all():
            raise ValueError("training batch has NaN or inf in actions")
        self._check_head_inputs(batch)
        cond = self.encode(batch["images"], batch["state"].float(), batch["instruction"], batch["embodiment"],
                           batch.get("image_mask"))
        valid = (~batch["action_is_pad"])[:, :, None] & batch["action_mask"][:, None, :]  # (B, H, D_max)
        extra = {name: batch[name] for name in self.head.batch_inputs}
        return self.head.loss(cond, target.float(), valid, **extra)

    def _check_head_inputs(self, batch: dict) -> None:
        """A ValueError naming the problem when the batch has action-free samples and the head learns only from
        actions, or lacks a field the head's loss takes."""
        action_free = ~batch["action_mask"].any(1)  # (B,)
        if bool(action_free.any()) and not self.head.trains_without_actions:
            names = sorted({e for e, free in zip(batch["embodiment"], action_free.tolist(), strict=True) if free})
            raise ValueError(f"{int(action_free.sum())} samples of this batch have no actions (action-free data of "
                             f"{names}); the {self.head.config.type} head learns from actions only: train the latent "
                             f"head (model.head.type=latent) on action-free data")
        missing = [name for name in self.head.batch_inputs if name not in batch]
        if missing:
            raise ValueError(f"the {self.head.config.type} head trains on batch field(s) {missing}, which this batch "
                             f"lacks (latent_codes: label the datasets with `vla-latent label` first)")

    @torch.no_grad()
    def predict(self, obs: Observation, generator: torch.Generator | None = None, prefix_actions: Tensor | None = None,
                prefix_weights: Tensor | None = None, **sample_options) -> ActionChunk:
        """One action chunk per observation, in each embodiment's own units: [B, H, D].

        prefix_actions [B, P, D] (robot units) and prefix_weights [P]: real-time chunking; heads
        that denoise (dit, dita, flow) inpaint the chunk's first P actions towards them.
        sample_options go to the head: num_steps (None: the head's default), bac (False by default:
        block caching only when asked, with the schedule calibrated for num_steps); see `sampling_settings`.
        """
        device = next(self.parameters()).device
        obs = obs.to(device)
        cond = self.condition(obs.images, obs.state.float(), obs.instruction, obs.embodiment, obs.image_mask)
        if prefix_actions is not None:
            prefix, _ = self._normalize_actions(prefix_actions.to(device).float(), obs.embodiment)
            sample_options |= {"prefix": prefix, "prefix_weights": prefix_weights.to(device).float()}
        normalized = self.head.sample(cond, generator=generator, **sample_options).float()  # (B, H, D_max)
        if not torch.isfinite(normalized).all():
            raise FloatingPointError("the action head produced NaN or inf actions")
        actions, mask = self.normalizer.unnormalize_actions(normalized, obs.embodiment)
        return ActionChunk(actions=actions, mask=mask)

    def sampling_settings(self, num_steps: int | None = None, bac: bool = False) -> dict:
        """What `predict(num_steps=num_steps, bac=bac)` samples with: the step count actually used (None / 0 ->
        the head's default), BAC on or off and the threshold of the schedule it uses (an error when bac=True and
        no schedule is calibrated for those steps), and the observation history length."""
        # a head that does not sample iteratively (token decoding) takes no step count
        steps = (num_steps or self.head.default_steps()) if self.head.default_steps() is not None else None
        cache = self.head.block_cache(steps, True) if bac else None
        return {"num_inference_steps": steps, "bac": bool(bac),
                "bac_threshold": cache.schedule.threshold if cache is not None else None,
                "n_obs_steps": self.config.n_obs_steps}

    def _check_tokenizer_embodiments(self, embodiment: list[str]) -> None:
        """A token head's tokenizer was fit on one embodiment's chunks; refuse samples of another."""
        tokenizer = self.head.action_tokenizer
        if tokenizer is not None:
            for name in sorted(set(embodiment)):
                tokenizer.check_embodiment(name)

    def _normalize_actions(self, actions: Tensor, embodiment: list[str]) -> tuple[Tensor, Tensor]:
        """(normalised actions [B, H, D_max], dim mask [B, D_max]), one normaliser call per embodiment."""
        target = actions.new_zeros(*actions.shape[:2], self.config.max_action_dim)
        mask = torch.zeros(len(embodiment), self.config.max_action_dim, dtype=torch.bool, device=actions.device)
        for name in set(embodiment):
            rows = torch.tensor([e == name for e in embodiment], device=actions.device)
            target[rows] = self.normalizer.normalize_action(actions[rows], name).to(target)
            mask[rows] = self.normalizer.action_mask(name).to(actions.device)
        return target, mask

    def save_pretrained(self, path, training: dict | None = None) -> None:
        """Write a checkpoint folder (vla.checkpoint) with its model card; `training`: see save_policy."""
        from vla.checkpoint import save_policy

        save_policy(self, path, training=training)

    @classmethod
    def from_pretrained(cls, path_or_repo_id, expected_head: str | None = None, revision: str | None = None,
                        cache_dir: str | None = None, device: str | torch.device = "cpu") -> VLAPolicy:
        """A checkpoint folder, or a hub id at `revision` (branch, tag or commit) through the HF cache."""
        from vla.checkpoint import load_policy

        return load_policy(path_or_repo_id, expected_head=expected_head, device=device, revision=revision,
                           cache_dir=cache_dir)

    def push_to_hub(self, repo_id: str, revision: str | None = None, **options):
        """Save this policy to a temporary folder and push it (vla.hub.push_to_hub, which takes `options`: commit
        message, private, license, token, api). A checkpoint folder written by vla-train is better pushed with
        vla.hub.push_to_hub itself: its card then shows the training run and the evaluation results."""
        import tempfile

        from vla.hub import push_to_hub

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_to_hub(folder, repo_id, revision=revision, **options)
