"""Typed run configuration: dataclasses, YAML recipes in configs/, dotted command-line overrides.

Parsed with draccus (as LeRobot does): `vla-train --config_path configs/quickstart.yaml
--train.steps 2000 --model.head.depth 6`. Unknown keys and wrong types fail with a message naming
the key (draccus' DecodingError / argparse error).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from vla.action_heads import DiTHeadConfig, HeadConfig
from vla.backbones.config import BackboneConfig
from vla.deploy.chunking import ScheduleConfig

NORMALIZATION_MODES = ("quantile", "zscore")
LOG_BACKENDS = ("csv", "tensorboard", "wandb")
DATA_READERS = ("memory", "stream")
MIXED_PRECISION = ("no", "bf16")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=DiTHeadConfig)
    max_action_dim: int = 4  # heads work in this padded, normalised action space
    max_state_dim: int = 7
    image_size: int = 64  # camera frames the policy expects: [N, image_size, image_size, 3]
    cameras: list[str] = field(default_factory=lambda: ["corner"])
    # observation history: frames per camera, oldest first, each an image slot of the backbone (Dita uses 2);
    # images are then [B, n_obs_steps * len(cameras), S, S, 3], time-major
    n_obs_steps: int = 1
    normalization: str = "quantile"  # quantile: q01..q99 -> [-1, 1]; zscore: mean/std
    # zscore only: sampled actions are clipped to +-this many std of the training actions (0 = no clip);
    # quantile always clips to [-1, 1] (q01..q99), the range its training targets are clamped to
    zscore_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1:
            raise ValueError(f"model.n_obs_steps must be >= 1; got {self.n_obs_steps}")
        if self.head.reads_language_cache and self.backbone.freeze_language:
            raise ValueError(f"the {self.head.type} head runs its own tokens through the backbone's language model "
                             f"(dita with head.denoiser=shared, token heads always), so the language model must "
                             f"train: set model.backbone.freeze_language=false (for dita, head.denoiser=separate "
                             f"also works)")
        if self.normalization not in NORMALIZATION_MODES:
            raise ValueError(f"model.normalization must be one of {NORMALIZATION_MODES}; got {self.normalization!r}")
        if not self.zscore_clip >= 0:
            raise ValueError(f"model.zscore_clip must be >= 0 (0 = no clip); got {self.zscore_clip}")


@dataclass
class MixtureEntry:
    """One dataset of a training mixture (data.mixture): where it is, what it is, how often it is drawn."""

    repo_id: str = ""
    root: str = "outputs/datasets"
    # its embodiment registry entry (name in configs/embodiments/ or YAML path); "" = LeRobot's default keys
    embodiment_config: str = ""
    embodiment: str = ""  # the name its statistics are kept under; "" = the entry's name, else the robot_type
    action_kind: str = ""
    weight: float = 1.0  # relative sampling weight (per dataset, not scaled by its size); 0 = statistics only


@dataclass
class DataConfig:
    root: str = "outputs/datasets"  # where LeRobot datasets live
    repo_id: str = "local/metaworld"
    # an embodiment registry entry describing the dataset: a name in configs/embodiments/ or a path to a YAML file.
    # It names the dataset's keys, maps its cameras to model.cameras (the model's image slots), gives action /
    # state names, kind and fps, and is checked against the dataset at load. "" = LeRobot's default keys, the
    # dataset's own names and fps, cameras named as model.cameras ("observation.images.<camera>")
    embodiment_config: str = ""
    action_dim: int | None = None  # the dataset's action dim must equal this (checked at load); None = not checked
    state_dim: int | None = None
    image_shift: int = 4  # random-shift augmentation in pixels (DrQ); 0 = off
    # colour jitter strength (torchvision ColorJitter: brightness / contrast / saturation factors 1 +- s, hue up to
    # s / 4), applied per image after the shift; 0 = off
    color_jitter: float = 0.0
    # the embodiment name the dataset's frames are trained (and normalised) under; "" = the dataset's robot_type
    embodiment: str = ""
    # joint_position | ee_delta: what the dataset's actions are; "" = the embodiment entry's, else as recorded in its
    # meta/vla_embodiment.json (vla-demos and vla-record write it); none of them is an error
    action_kind: str = ""
    # several datasets trained on together, each drawn by its weight (vla.data.mixture); when given, root, repo_id,
    # embodiment_config, embodiment and action_kind above are not used. Every dataset's images are resized to
    # model.image_size; its registry entry maps its cameras to model.cameras (a camera it lacks is masked)
    mixture: list[MixtureEntry] = field(default_factory=list)
    # DataLoader worker processes that read and transform samples (0 = in the training process; in-memory datasets
    # need none)
    num_workers: int = 0
    # how frames are read: memory (every frame decoded once into RAM at start: fast for small data) | stream (each
    # sample's frames decoded when drawn, in the DataLoader workers, from image- or video-mode datasets: memory does
    # not grow with the dataset; vla.data.frames.LeRobotFrames)
    reader: str = "memory"

    def __post_init__(self) -> None:
        if self.reader not in DATA_READERS:
            raise ValueError(f"data.reader must be one of {DATA_READERS}; got {self.reader!r}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0; got {self.num_workers}")

    def datasets(self) -> list[MixtureEntry]:
        """The mixture, or the one dataset of root / repo_id as a mixture of one."""
        if self.mixture:
            return list(self.mixture)
        return [MixtureEntry(repo_id=self.repo_id, root=self.root, embodiment_config=self.embodiment_config,
                             embodiment=self.embodiment, action_kind=self.action_kind)]


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class LoraConfig:
    """LoRA adapters trained instead of the weights they adapt (vla.training.lora; peft's LoraConfig is built from
    this). targets: glob patterns over the policy's module names, each matching at least one nn.Linear, e.g.
    "backbone.language.*_proj" ("backbone.vision" / "backbone.language" stand for the family's vision tower +
    projector / language model) or "head.*"; [] = no LoRA. Everything else is frozen except `train_also`."""

    targets: list[str] = field(default_factory=list)
    r: int = 16  # rank of each adapter
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input
    # module-name prefixes trained in full beside the adapters (e.g. "head"); layers that init_from re-initialised
    # or added always train
    train_also: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.r < 1 or not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"train.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1; got r={self.r}, "
                             f"alpha={self.alpha}, dropout={self.dropout}")
        if self.train_also and not self.targets:
            raise ValueError(f"train.lora.train_also={self.train_also} without train.lora.targets: without adapters "
                             f"everything trains already; give the targets, or use train.freeze for the rest")


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    seed: int = 0
    output_dir: str = "outputs/train/quickstart"
    log_every: int = 50
    save_every: int = 1000
    keep_last: int = 3  # checkpoints kept in output_dir/checkpoints (older step_* are deleted); 0 = keep all
    # continue output_dir/checkpoints/last exactly (weights, optimiser, every RNG); a finished run is reused as is
    resume: bool = False
    # resume although train/data settings differ from the run's (e.g. more steps): the LR schedule is recomputed,
    # so the result is no longer what one uninterrupted run of this config gives; the change is recorded
    resume_with_changes: bool = False
    mixed_precision: str = "no"  # no | bf16 (accelerate)
    # stop (and save) after this wall time, leaving a partial run (rerun the command to continue it; the LR
    # schedule still spans `steps`); 0 = no limit. Makes the step count machine-dependent: not for reproducible runs
    time_limit_s: float = 0.0
    # micro-batches of batch_size (per process) summed into each optimiser step: a step sees
    # batch_size * grad_accum_steps * processes samples (recorded in the checkpoint as samples_per_step)
    grad_accum_steps: int = 1
    # recompute the VLM's layer activations in backward instead of storing them (less memory, ~1 more forward)
    gradient_checkpointing: bool = False
    # EMA of the trainable weights with this decay (e.g. 0.999; 0 = off). When on, checkpoints (and so evaluation
    # and export) hold the EMA weights, meta.json says so, and the trained weights are kept for resuming
    ema_decay: float = 0.0
    # where scalars go besides output_dir/metrics.csv (always written): csv (nothing else) | tensorboard (tb/) |
    # wandb (output_dir/wandb; offline unless WANDB_MODE=online, so it works without network)
    log_backend: str = "tensorboard"
    wandb_project: str = "vla"
    # after the last step, check that the saved checkpoint predicts the same actions as the live model (every rank)
    verify_export: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)
    # fine-tuning (vla.training.finetune). init_from: a policy checkpoint folder whose tensors of matching name and
    # shape start this run (a new run, not a resume; model.* describes the policy, the backbone is the checkpoint's);
    # its embodiments' statistics are kept and the dataset's embodiment is added. "" = start from model.backbone
    init_from: str = ""
    # module-name prefixes kept fixed, e.g. [backbone.vision, head.net.blocks.0] ("backbone.vision" /
    # "backbone.language" stand for the family's vision tower + projector / language model)
    freeze: list[str] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.grad_accum_steps < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1; got {self.grad_accum_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no EMA; 0.999 is typical); got {self.ema_decay}")
        if self.log_backend not in LOG_BACKENDS:
            raise ValueError(f"train.log_backend must be one of {LOG_BACKENDS}; got {self.log_backend!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}; got {self.mixed_precision!r}")


@dataclass
class SampleVerifyConfig:
    """RoboMonkey-style test-time scaling (vla.test_time): sample `samples` chunks per observation in one batched
    head call, expand them to `candidates` Gaussian draws (0 = score the samples themselves), execute the one the
    verifier scores highest. Off while `verifier` is empty."""

    verifier: str = ""  # a verifier folder (vla-eval train-verifier); "" = off: plain policy.predict
    samples: int = 4  # N policy samples per observation
    candidates: int = 0  # K Gaussian draws scored by the verifier; 0 = score the N samples
    temperature: float | None = None  # token heads: sampling temperature (None: the head's own; ar needs > 0)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"eval.test_time.samples must be >= 1 (policy samples per observation); "
                             f"got {self.samples}")
        if self.candidates < 0:
            raise ValueError(f"eval.test_time.candidates must be >= 0 (0 = score the samples); got {self.candidates}")

    @property
    def enabled(self) -> bool:
        return bool(self.verifier)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach", "push", "button-press-topdown"])
    episodes_per_task: int = 20
    seed_start: int = 100_000  # demos use seeds from 0; evaluation never reuses them
    max_steps: int = 200
    num_inference_steps: int = 0  # denoising steps (DDIM or flow Euler); 0 = the checkpoint's default
    # block-wise adaptive caching with the checkpoint's schedule for num_inference_steps; off unless asked,
    # as in policy.predict, vla-deploy and vla-serve
    bac: bool = False
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # chunk execution / ensembling
    videos_per_task: int = 2
    privileged_state: bool = False  # diagnostics: the simulator adds the object position (policy must expect it)
    output_dir: str = ""  # default: <checkpoint>/../../eval
    checkpoint: str = ""  # for vla-eval
    test_time: SampleVerifyConfig = field(default_factory=SampleVerifyConfig)  # sample N, verify, execute the best; off

    def __post_init__(self) -> None:
        if self.num_inference_steps < 0:
            raise ValueError(f"eval.num_inference_steps must be >= 1 (or 0 for the checkpoint's default); "
                             f"got {self.num_inference_steps}")


def parse(config_class: type, args: list[str] | None = None):
    """Parse a config dataclass from `--config_path=FILE.yaml` plus dotted overrides."""
    return draccus.parse(config_class, args=args)


def parse_with_recipe(config_class: type, recipe: str, args: list[str] | None = None):
    """`parse` with `recipe` as the --config_path when the arguments give none (and the file exists, i.e. when run
    from the repository root): a benchmark's nested defaults live in its recipe, since draccus rebuilds a whole
    section that a flag overrides. args: default sys.argv[1:]."""
    args = list(sys.argv[1:] if args is None else args)
    if not any(a.startswith("--config_path") for a in args) and Path(recipe).exists():
        args = [f"--config_path={recipe}", *args]
    return draccus.parse(config_class, args=args)


def to_yaml(config) -> str:
    return draccus.dump(config)


def from_yaml(config_class: type, text_or_path: str):
    from io import StringIO
    from pathlib import Path

    path = Path(text_or_path)
    if len(text_or_path) < 4096 and path.suffix in (".yaml", ".yml") and path.exists():
        with open(path) as f:
            return draccus.load(config_class, f)
    return draccus.load(config_class, StringIO(text_or_path))
