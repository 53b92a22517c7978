"""Train an action verifier (`vla.test_time.verifier`) on a policy's demos with synthetic preferences.

    vla-eval train-verifier --checkpoint CKPT --data.root outputs/datasets --data.repo_id local/metaworld

As RoboMonkey (METHODS.md section 10, stage 1): for each frame the expert chunk, `negatives` copies with Gaussian
noise (i.i.d. per entry plus an offset shared by the chunk's steps, scale log-uniform in [noise_min, noise_max]
normalised units, clipped to the policy's action range) and, with `policy_samples` > 0, that many chunks sampled
from the policy itself (RoboMonkey's own candidates: the ones the verifier must tell apart at test time, all near
the expert and near each other, which perturbed experts alone do not teach) are ranked by their RMSE to the expert
chunk; every pair (a_w closer than a_l, gap Δ) gives the Bradley-Terry loss with a margin,
-log σ(r(a_w) - r(a_l) - margin · Δ). The policy stays frozen: its conditioning of every frame and its samples are
computed once. The last `holdout_episodes` episodes are kept out of training and the ranking is reported on them.
Writes <output_dir>/verifier.{safetensors,json} and loss.png.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vla.config import DataConfig
from vla.provenance import provenance
from vla.test_time.sampling import check_deterministic_head
from vla.test_time.verifier import Verifier, VerifierConfig, observation_features


@dataclass
class VerifierTrainConfig:
    checkpoint: str = ""  # the policy whose backbone (frozen) the verifier reads
    data: DataConfig = field(default_factory=DataConfig)  # the demos, when not read from the run (below)
    # read the demos' data config from the checkpoint's run (<checkpoint>/../../train_config.yaml, written by
    # vla-train) when it is there: the dataset the policy trained on
    data_from_run: bool = True
    output_dir: str = ""  # default: <checkpoint>/../../verifier
    hidden: int = 256
    depth: int = 2
    steps: int = 2000
    batch_size: int = 64  # frames per step; each with 1 + negatives candidates
    lr: float = 1e-3
    weight_decay: float = 0.01
    negatives: int = 8
    # the policy's own sampled chunks per frame among the candidates (drawn once, from the frozen policy; 0 = the
    # expert and its perturbations only)
    policy_samples: int = 0
    temperature: float | None = None  # token heads' sampling temperature for policy_samples (None: the head's own)
    noise_min: float = 0.02  # perturbation scale range, normalised units
    noise_max: float = 0.5
    margin: float = 1.0  # α of the margin term
    holdout_episodes: int = 1
    feature_batch: int = 32  # frames per backbone pass when computing the conditioning
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"verifier training needs negatives, steps and batch_size >= 1; got {self.negatives}, "
                             f"{self.steps}, {self.batch_size}")
        if self.policy_samples < 0:
            raise ValueError(f"policy_samples must be >= 0; got {self.policy_samples}")
        if not 0 < self.noise_min <= self.noise_max:
            raise ValueError(f"need 0 < noise_min <= noise_max; got {self.noise_min}, {self.noise_max}")


@dataclass
class PreferenceData:
    """What the verifier trains on, per frame: features [N, F] (`observation_features`), expert [N, H, D_max]
    normalised chunks, valid bool [N, H, D_max] (real steps and dims), holdout bool [N], and the policy's own
    samples [N, S, H, D_max] (normalised; None without `policy_samples`)."""

    features: Tensor
    expert: Tensor
    valid: Tensor
    holdout: Tensor
    samples: Tensor | None = None


@torch.no_grad()
def preference_data(policy, demos, cfg: VerifierTrainConfig) -> PreferenceData:
    """The frozen policy's conditioning of every frame (one backbone pass per `feature_batch` frames) and, with
    `policy_samples`, that many chunks the policy samples from it (one batched head call per pass, seeded)."""
    options = {} if cfg.temperature is None else {"temperature": cfg.temperature}
    if cfg.policy_samples:
        check_deterministic_head(policy, cfg.policy_samples, options, flag="verifier_train.temperature")
    policy.eval()
    device = next(policy.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU, as every sampler here: the same draws anywhere
    features, samples = [], []
    for start in tqdm(range(0, len(demos), cfg.feature_batch), desc="verifier features", unit="batch"):
        index = torch.arange(start, min(start + cfg.feature_batch, len(demos)))
        embodiment = [demos.embodiment] * len(index)
        cond = policy.condition(demos.observation_images(index, policy.config.n_obs_steps).to(device),
                                demos.state[index].to(device), demos.instructions(index), embodiment,
                                demos.observation_mask(len(index), policy.config.n_obs_steps).to(device))
        features.append(observation_features(cond).cpu())
        if cfg.policy_samples:
            samples.append(policy.head.sample_n(cond, cfg.policy_samples, generator=generator, **options).float().cpu())
    normalizer = policy.normalizer
    expert = normalizer.normalize_action(demos.actions, demos.embodiment).float()
    valid = (~demos.action_is_pad)[:, :, None] & normalizer.action_mask(demos.embodiment)[None, None, :]
    episodes = demos.episode_index.unique(sorted=True)
    held = episodes[len(episodes) - cfg.holdout_episodes:] if cfg.holdout_episodes else episodes[:0]
    return PreferenceData(torch.cat(features), expert, valid, torch.isin(demos.episode_index, held),
                          torch.cat(samples) if samples else None)


def rmse(candidates: Tensor, expert: Tensor, valid: Tensor) -> Tensor:
    """candidates [B, K, H, D], expert / valid [B, H, D] -> RMSE over the valid entries [B, K]."""
    weight = valid[:, None].float()
    return (((candidates - expert[:, None]) ** 2 * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1.0)).sqrt()


def chosen_rmse(distance: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """distance / scores [B, K] -> the RMSE [B] of the verifier's pick (highest score) and of the closest candidate
    (the oracle's pick)."""
    picked = distance[torch.arange(len(distance)), scores.argmax(1)]
    return picked, distance.min(1).values


def perturb(expert: Tensor, valid: Tensor, scales: Tensor, clip: float | None,
            generator: torch.Generator | None = None) -> Tensor:
    """expert / valid [B, H, D], scales [B, M] -> [B, M, H, D]: each copy plus scale x (i.i.d. noise + an offset
    shared by all steps) / sqrt(2), only at valid entries, clipped to [-clip, clip]."""
    b, h, d = expert.shape
    m = scales.shape[1]
    noise = (torch.randn(b, m, h, d, generator=generator) + torch.randn(b, m, 1, d, generator=generator)) / 2**0.5
    out = expert[:, None] + scales[..., None, None] * noise * valid[:, None]
    return out.clamp(-clip, clip) if clip else out


def preference_loss(scores: Tensor, distance: Tensor, margin: float) -> Tensor:
    """Bradley-Terry with a margin over every ordered pair of a frame's candidates: scores / distance [B, K];
    a_w is the candidate closer to the expert, Δ = distance_l - distance_w > 0. Mean of -log σ(r_w - r_l - margin Δ)."""
    gap = distance[:, None, :] - distance[:, :, None]  # (B, K_w, K_l): d_l - d_w
    pairs = gap > 1e-6
    logits = scores[:, :, None] - scores[:, None, :] - margin * gap
    return -F.logsigmoid(logits[pairs]).mean()


def candidate_scales(cfg: VerifierTrainConfig, batch: int, generator: torch.Generator) -> Tensor:
    """[B, negatives] log-uniform in [noise_min, noise_max]."""
    low, high = torch.log(torch.tensor(cfg.noise_min)), torch.log(torch.tensor(cfg.noise_max))
    return (low + (high - low) * torch.rand(batch, cfg.negatives, generator=generator)).exp()


def train_verifier_on(data: PreferenceData, verifier: Verifier, cfg: VerifierTrainConfig,
                      clip: float | None) -> list[float]:
    """AdamW on the training frames (not the held-out ones); returns the loss of every step."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train = torch.nonzero(~data.holdout)[:, 0]
    if len(train) == 0:
        raise ValueError(f"holdout_episodes={cfg.holdout_episodes} leaves no training episodes")
    optimizer = torch.optim.AdamW(verifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    verifier.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="verifier", unit="step"):
        index = train[torch.randint(len(train), (cfg.batch_size,), generator=generator)]
        expert, valid = data.expert[index], data.valid[index]
        negatives = perturb(expert, valid, candidate_scales(cfg, len(index), generator), clip, generator)
        own = [] if data.samples is None else [data.samples[index]]
        candidates = torch.cat([expert[:, None], *own, negatives], 1)  # (B, 1 + S + M, H, D)
        loss = preference_loss(verifier.score(data.features[index], candidates), rmse(candidates, expert, valid),
                               cfg.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    verifier.eval()
    return losses


@torch.no_grad()
def ranking(verifier: Verifier, data: PreferenceData, rows: Tensor, cfg: VerifierTrainConfig, clip: float | None,
            seed: int = 1) -> dict:
    """On the frames `rows` (bool [N]): how often the expert chunk scores above a heavy perturbation (scale
    noise_max), and the share of candidate pairs (expert + perturbations at scales spread over the range) the
    verifier orders as their RMSE to the expert does (chance: 0.5 for both). With the policy's samples, what
    test-time scaling needs: the RMSE to the expert of the verifier's pick among a frame's samples, against a
    sample's mean RMSE (no choice) and the closest sample's (the oracle)."""
    index = torch.nonzero(rows)[:, 0]
    if len(index) == 0:
        return {"frames": 0, "expert_above_heavy": None, "pair_accuracy": None}
    generator = torch.Generator().manual_seed(seed)
    expert, valid = data.expert[index], data.valid[index]
    scales = torch.logspace(torch.log10(torch.tensor(cfg.noise_min)), torch.log10(torch.tensor(cfg.noise_max)),
                            cfg.negatives).expand(len(index), -1)
    candidates = torch.cat([expert[:, None], perturb(expert, valid, scales, clip, generator)], 1)
    scores = verifier.score(data.features[index], candidates)
    distance = rmse(candidates, expert, valid)
    gap = distance[:, None, :] - distance[:, :, None]
    pairs = gap > 1e-6
    agree = (scores[:, :, None] > scores[:, None, :])[pairs].float().mean().item()
    result = {"frames": len(index), "expert_above_heavy": (scores[:, 0] > scores[:, -1]).float().mean().item(),
              "pair_accuracy": agree}
    if data.samples is not None:
        sample_distance = rmse(data.samples[index], expert, valid)  # (B, S)
        picked, closest = chosen_rmse(sample_distance, verifier.score(data.features[index], data.samples[index]))
        result |= {"sample_rmse": sample_distance.mean().item(), "sample_pick_rmse": picked.mean().item(),
                   "sample_oracle_rmse": closest.mean().item()}
    return result


def training_data(cfg: VerifierTrainConfig) -> DataConfig:
    """The data config of the checkpoint's training run when `data_from_run` and the run folder has one, else
    cfg.data."""
    from vla.config import from_yaml
    from vla.training.train import TrainRunConfig

    run = Path(cfg.checkpoint).resolve().parent.parent / "train_config.yaml"
    if cfg.data_from_run and cfg.checkpoint and run.is_file():
        return from_yaml(TrainRunConfig, str(run)).data
    return cfg.data


def train_verifier(cfg: VerifierTrainConfig, policy=None, demos=None) -> Path:
    """Load the checkpoint and its demos (unless given), train, save; returns the verifier folder."""
    from vla.checkpoint import load_policy

    if policy is None:
        if not cfg.checkpoint:
            raise SystemExit("train-verifier needs --checkpoint PATH (the policy the verifier serves)")
        policy = load_policy(cfg.checkpoint)
    if demos is None:
        from vla.training.train import load_demos

        demos = load_demos(policy.config, training_data(cfg))
    out = Path(cfg.output_dir or Path(cfg.checkpoint).resolve().parent.parent / "verifier")
    data = preference_data(policy, demos, cfg)
    verifier = Verifier(VerifierConfig(cond_dim=policy.backbone.hidden_size, state_dim=policy.config.max_state_dim,
                                       horizon=policy.config.head.horizon, action_dim=policy.config.max_action_dim,
                                       hidden=cfg.hidden, depth=cfg.depth))
    clip = policy.head.action_clip
    losses = train_verifier_on(data, verifier, cfg, clip)
    summary = {"checkpoint": cfg.checkpoint, "dataset": cfg.data.repo_id, "embodiment": demos.embodiment,
               "frames": len(demos), "steps": cfg.steps, "first_loss": losses[0], "last_loss": losses[-1],
               "loss_every_10": losses[::10], "train": ranking(verifier, data, ~data.holdout, cfg, clip),
               "held_out": ranking(verifier, data, data.holdout, cfg, clip),
               "settings": {k: getattr(cfg, k) for k in ("negatives", "policy_samples", "temperature", "noise_min",
                                                        "noise_max", "margin", "batch_size", "lr", "holdout_episodes",
                                                        "seed")},
               "provenance": provenance(cfg)}
    verifier.save(out, summary)
    plot_loss(losses, out / "loss.png")
    held = summary["held_out"]["expert_above_heavy"]
    print(f"verifier: loss {losses[0]:.3f} -> {losses[-1]:.3f}; expert above heavy perturbation "
          f"{summary['train']['expert_above_heavy']:.2f} (train), {'-' if held is None else f'{held:.2f}'} "
          f"(held out); saved to {out}")
    return out


def plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("preference loss")
    ax.set_title("verifier training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: list[str] | None = None) -> None:
    train_verifier(draccus.parse(VerifierTrainConfig, args=args))


if __name__ == "__main__":
    main()
