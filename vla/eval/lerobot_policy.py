"""A LeRobot policy (ACT, Diffusion Policy, SmolVLA, ...) driven by this repo's closed-loop rollout.

    policy = LeRobotPolicy.load("outputs/.../checkpoints/last/pretrained_model")
    episodes, _ = run_tasks(policy, eval_cfg, image_size, camera)       # vla.eval.rollout, as for our policies

It does what `lerobot_eval.rollout` does for one environment: the simulator frame becomes LeRobot's observation
(`preprocess_observation`: channel-first float in [0, 1], state, task string), the checkpoint's own pre-processor
(normalisation with the training set's statistics, tokenisation for SmolVLA) runs, then `policy.select_action`
(which keeps LeRobot's own action queue, observation history and, for ACT, temporal ensembling), then the
checkpoint's post-processor (un-normalisation). So the rollout sees one action per call: a chunk of horizon 1 (run
it with `schedule.execute_steps=1`), and the policy executes its chunks as LeRobot's own evaluation does.

Inference latency per chunk is the time of the calls in which the model ran (LeRobot refills its action queue
every `n_action_steps` calls after `reset`, or every call with temporal ensembling), pre- and post-processing
included, at batch 1: `chunk_latencies`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vla.config import EvalConfig
from vla.types import ActionChunk, Observation

OBS_IMAGES_PREFIX = "observation.images."


@dataclass
class StepHead:
    """What the rollout reads of a head: its chunk horizon. LeRobot's select_action returns one action per call."""

    horizon: int = 1


@dataclass
class LeRobotPolicyInfo:
    """The settings of a loaded LeRobot policy that the rollout and the reports read (the `config` of the adapter).

    n_obs_steps stays 1 for the rollout's frame history: LeRobot policies keep their own observation queue.
    """

    type: str
    image_size: int
    cameras: list[str]
    chunk_size: int
    n_action_steps: int
    temporal_ensemble: bool = False
    n_obs_steps: int = 1
    head: StepHead = field(default_factory=StepHead)


class LeRobotPolicy:
    """A LeRobot `PreTrainedPolicy` with its pre/post-processor pipelines, behind `predict` / `reset`."""

    def __init__(self, policy, preprocessor, postprocessor):
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        cfg = policy.config
        cameras = [key.removeprefix(OBS_IMAGES_PREFIX) for key in cfg.image_features]
        if not cameras:
            raise ValueError(f"the {cfg.type} policy has no camera input ({list(cfg.input_features)}); the rollout "
                             f"feeds camera frames")
        sizes = {tuple(feature.shape[1:]) for feature in cfg.image_features.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
            raise ValueError(f"expected square camera images of one size; the policy's are {sorted(sizes)}")
        ensemble = getattr(cfg, "temporal_ensemble_coeff", None) is not None
        self.config = LeRobotPolicyInfo(type=cfg.type, image_size=next(iter(sizes))[0], cameras=cameras,
                                        chunk_size=_chunk_size(cfg), n_action_steps=cfg.n_action_steps,
                                        temporal_ensemble=ensemble)
        self.chunk_latencies: list[float] = []  # seconds, one per model call
        self._calls = 0

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> LeRobotPolicy:
        """The policy and its processors from a LeRobot `pretrained_model` folder, as `lerobot_eval` loads them."""
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a LeRobot policy folder (no config.json); pass "
                                    f"<lerobot output_dir>/checkpoints/last/pretrained_model")
        config = PreTrainedConfig.from_pretrained(path)
        config.device = device
        # strict: a checkpoint missing weights is an error here, not a warning (LeRobot's default is lenient)
        policy = get_policy_class(config.type).from_pretrained(path, config=config, strict=True)
        preprocessor, postprocessor = make_pre_post_processors(
            config, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}})
        return cls(policy, preprocessor, postprocessor)

    def eval(self) -> LeRobotPolicy:
        self.policy.eval()
        return self

    @property
    def embodiments(self) -> None:
        """LeRobot checkpoints name no embodiment (their statistics are per dataset key): the rollout's embodiment
        check does not apply; the comparison trains them on the evaluated task's own dataset."""
        return None

    def reset(self) -> None:
        """Start an episode: LeRobot's action and observation queues are cleared (as `lerobot_eval.rollout` does)."""
        self.policy.reset()
        self._calls = 0

    def runs_model(self, call: int) -> bool:
        """Whether select_action call number `call` after reset (0-based) runs the model: every call with temporal
        ensembling, else whenever the action queue of n_action_steps is empty."""
        return self.config.temporal_ensemble or call % self.config.n_action_steps == 0

    def sampling_settings(self, num_steps: int | None = None, bac: bool = False) -> dict:
        """The settings the rollout records; LeRobot policies sample with their own defaults only."""
        if num_steps or bac:
            raise ValueError(f"a LeRobot {self.config.type} policy samples with its own settings: run it with "
                             f"eval.num_inference_steps=0 and eval.bac=false (got {num_steps}, {bac})")
        cfg = self.policy.config
        return {"policy": f"lerobot/{cfg.type}", "chunk_size": self.config.chunk_size,
                "n_action_steps": self.config.n_action_steps, "temporal_ensemble": self.config.temporal_ensemble,
                "num_inference_steps": sampling_steps(cfg),
                "n_obs_steps": cfg.n_obs_steps, "bac": False}

    def lerobot_observation(self, obs: Observation) -> dict:
        """Our observation (uint8 [1, n, H, W, 3], the newest frame last) as `preprocess_observation` makes it."""
        if obs.batch_size != 1:
            raise ValueError(f"LeRobotPolicy drives one environment; got a batch of {obs.batch_size}")
        frames = obs.images[:, -len(self.config.cameras):]  # [1, n_cams, H, W, 3]: the current frame of each camera
        batch = {f"{OBS_IMAGES_PREFIX}{camera}": frames[:, i].permute(0, 3, 1, 2).float() / 255
                 for i, camera in enumerate(self.config.cameras)}
        return batch | {"observation.state": obs.state.float(), "task": list(obs.instruction)}

    def predict(self, obs: Observation, generator: torch.Generator | None = None, num_steps: int | None = None,
                bac: bool | None = None) -> ActionChunk:
        """One action, [1, 1, D] in the dataset's units. The sampling noise LeRobot draws from torch's global RNG
        is seeded from `generator` (the rollout's per-episode generator), so an episode is reproducible."""
        if num_steps or bac:
            self.sampling_settings(num_steps, bool(bac))  # raises, naming the setting
        ran_model = self.runs_model(self._calls)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            action = self.postprocessor(self.policy.select_action(self.preprocessor(self.lerobot_observation(obs))))
        if ran_model:
            self.chunk_latencies.append(time.perf_counter() - start)
        self._calls += 1
        action = action.detach().to("cpu", torch.float32).reshape(1, 1, -1)
        return ActionChunk(actions=action, mask=torch.ones(1, action.shape[-1], dtype=torch.bool))

    def parameters(self):
        return self.policy.parameters()

    def parameter_counts(self) -> dict[str, int]:
        """{"total": all parameters, "vision": those of the image encoder (ResNet for ACT / DP, the VLM's vision
        tower for SmolVLA)}."""
        total = sum(p.numel() for p in self.policy.parameters())
        vision = sum(p.numel() for name, p in self.policy.named_parameters() if _is_vision(name))
        return {"total": total, "vision": vision}


def evaluate(policy: LeRobotPolicy, cfg: EvalConfig) -> dict:
    """`vla.eval.rollout.evaluate` for a LeRobot policy: the same tasks, seeds, rollout loop and outputs, one action
    per call (cfg.schedule must execute 1 step per "chunk"), latency per model call (`chunk_latencies`)."""
    from vla.eval.rollout import run_tasks, write_summary

    if cfg.schedule.mode != "receding" or cfg.schedule.execute_steps != 1:
        raise ValueError(f"a LeRobot policy executes its own chunks (select_action returns one action): evaluate it "
                         f"with schedule mode receding, execute_steps 1; got {cfg.schedule}")
    sampling = policy.sampling_settings(cfg.num_inference_steps, cfg.bac)
    policy.chunk_latencies = []
    episodes, _ = run_tasks(policy, cfg, policy.config.image_size, policy.config.cameras[0])
    return write_summary(episodes, policy.chunk_latencies, cfg, sampling)


def first_set(cfg, names: tuple[str, ...]) -> int | None:
    """The first of `names` that the LeRobot config sets (its policies name the same setting differently)."""
    return next((int(getattr(cfg, name)) for name in names if getattr(cfg, name, None)), None)


def sampling_steps(cfg) -> int | None:
    """Denoising steps per chunk: Diffusion Policy's num_inference_steps (None there means all of its
    num_train_timesteps), SmolVLA's num_steps; None for a policy that samples in one pass (ACT)."""
    return first_set(cfg, ("num_inference_steps", "num_train_timesteps", "num_steps"))


def _chunk_size(cfg) -> int:
    """Actions per model call: `chunk_size` (ACT, SmolVLA) or `horizon` (Diffusion Policy)."""
    size = first_set(cfg, ("chunk_size", "horizon"))
    if size is None:
        raise ValueError(f"the {cfg.type} config has neither chunk_size nor horizon")
    return size


# Parameter-name parts of each LeRobot policy's image encoder: ACT's `model.backbone` (torchvision ResNet), Diffusion
# Policy's `diffusion.rgb_encoder` (ResNet + spatial softmax + projection), SmolVLA's VLM `vision_model`.
VISION_PARTS = ("model.backbone.", "diffusion.rgb_encoder.", ".vision_model.")


def _is_vision(name: str) -> bool:
    return any(part in name for part in VISION_PARTS)
