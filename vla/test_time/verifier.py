"""An action verifier (RoboMonkey, METHODS.md section 10): a small model scoring how good an action chunk is for an
observation, on top of a frozen policy's backbone.

Input: the policy's conditioning for the observation (cognition token [C], mean of the backbone tokens [C], the
normalised state [S_max]) and a normalised, padded action chunk [H, D_max]; output: a scalar (higher = better).
The paper finetunes a 7B VLM reward model; here the VLM is the policy's own (frozen) backbone and only this head is
trained (`vla.test_time.verifier_training`). A verifier folder: `verifier.safetensors` + `verifier.json` (sizes,
the policy it was trained for, training summary).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vla.types import Cond

WEIGHTS, CONFIG = "verifier.safetensors", "verifier.json"


@dataclass
class VerifierConfig:
    cond_dim: int  # C: the backbone's hidden size
    state_dim: int  # S_max: the policy's padded state width
    horizon: int  # H
    action_dim: int  # D_max: the policy's padded action width
    hidden: int = 256
    depth: int = 2  # hidden layers of the scoring MLP

    def __post_init__(self) -> None:
        for name in ("cond_dim", "state_dim", "horizon", "action_dim", "hidden", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"verifier {name} must be >= 1; got {getattr(self, name)}")


def observation_features(cond: Cond) -> Tensor:
    """[B, 2C + S_max]: cognition token, mean of the real backbone tokens, normalised state."""
    backbone = cond.backbone
    weight = backbone.token_mask[..., None].to(backbone.tokens.dtype)
    pooled = (backbone.tokens * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    return torch.cat([backbone.cognition, pooled, cond.proprio.to(pooled.dtype)], dim=-1).float()


class Verifier(nn.Module):
    """score(features [B, F], actions [B, K, H, D_max]) -> [B, K]."""

    def __init__(self, config: VerifierConfig):
        super().__init__()
        self.config = config
        feature_dim = 2 * config.cond_dim + config.state_dim
        self.observation = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, config.hidden), nn.GELU())
        self.action = nn.Sequential(nn.Linear(config.horizon * config.action_dim, config.hidden), nn.GELU())
        layers: list[nn.Module] = []
        width = 3 * config.hidden  # observation, action and their product
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.GELU()]
            width = config.hidden
        self.score_mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def score(self, features: Tensor, actions: Tensor) -> Tensor:
        """features [B, F] (`observation_features`), actions [B, K, H, D_max] normalised -> scores [B, K]."""
        self.check_actions(actions)
        obs = self.observation(features)[:, None].expand(-1, actions.shape[1], -1)  # (B, K, hidden)
        act = self.action(actions.flatten(2).to(features.dtype))  # (B, K, hidden)
        return self.score_mlp(torch.cat([obs, act, obs * act], dim=-1))[..., 0]

    def check_actions(self, actions: Tensor) -> None:
        expected = (self.config.horizon, self.config.action_dim)
        if actions.ndim != 4 or tuple(actions.shape[2:]) != expected:
            raise ValueError(f"the verifier scores chunks [B, K, {expected[0]}, {expected[1]}] (horizon, padded "
                             f"action width of the policy it was trained for); got {list(actions.shape)}")

    def check_policy(self, policy, where: str = "verifier") -> None:
        """A ValueError naming both sides unless `policy` makes the inputs this verifier was trained on."""
        config = policy.config
        theirs = {"cond_dim": policy.backbone.hidden_size, "state_dim": config.max_state_dim,
                  "horizon": config.head.horizon, "action_dim": config.max_action_dim}
        differ = {k: (getattr(self.config, k), v) for k, v in theirs.items() if getattr(self.config, k) != v}
        if differ:
            text = ", ".join(f"{k} {mine} (verifier) vs {v} (policy)" for k, (mine, v) in differ.items())
            raise ValueError(f"{where} was trained for another policy: {text}; train one for this checkpoint "
                             f"with `vla-eval train-verifier --checkpoint ...`")

    def save(self, folder: str | Path, summary: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps({"config": asdict(self.config), "training": summary or {}}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Verifier:
        folder = Path(folder)
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a verifier folder: {name} is missing (write one with "
                                        f"`vla-eval train-verifier`)")
        verifier = cls(VerifierConfig(**json.loads((folder / CONFIG).read_text())["config"]))
        verifier.load_state_dict(load_file(folder / WEIGHTS, device=str(device)))
        return verifier.to(device).eval()

    @staticmethod
    def training_summary(folder: str | Path) -> dict:
        return json.loads((Path(folder) / CONFIG).read_text())["training"]
