"""The training loop: Accelerate, AdamW with warmup + cosine decay, clipping, logging, checkpoints.

    vla-train --config_path configs/train/metaworld_dit.yaml --train.steps 2000
    accelerate launch --multi_gpu --num_processes 2 train.py --config_path ...   (same code, 2 ranks)

Batches are drawn from an in-memory copy of the LeRobot dataset (see vla.data.dataset), each rank
with its own seed, so data-parallel ranks see different samples without a sharded DataLoader.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from vla.checkpoint import count_parameters, load_policy
from vla.config import DataConfig, ModelConfig, TrainConfig, parse, to_yaml
from vla.data.augment import random_shift
from vla.data.dataset import ChunkedDemos, load_chunked_demos
from vla.data.normalize import Normalizer
from vla.policy import VLAPolicy
from vla.training.checkpoint import load_training_state, save_training_state
from vla.training.logging import ScalarLogger, plot_loss_curve


@dataclass
class TrainRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def last_checkpoint(output_dir: str | Path) -> Path:
    return checkpoint_dir(output_dir) / "last"


def load_demos(model: ModelConfig, data: DataConfig) -> ChunkedDemos:
    demos = load_chunked_demos(data.root, data.repo_id, chunk_size=model.head.horizon,
                               expected_action_dim=data.action_dim, expected_state_dim=data.state_dim)
    check_observation_spec(model, demos)
    return demos


def check_observation_spec(model: ModelConfig, demos: ChunkedDemos) -> None:
    """Fail before training, naming both sides, when the dataset's cameras differ from the model config's."""
    cameras = [key.removeprefix("observation.images.") for key in demos.camera_keys]
    size = tuple(demos.images.shape[2:4])
    if cameras != list(model.cameras) or size != (model.image_size, model.image_size):
        raise ValueError(f"dataset {demos.embodiment!r} has cameras {cameras} at {size[0]}x{size[1]} px; the model "
                         f"config expects {list(model.cameras)} at {model.image_size}x{model.image_size} px "
                         f"(set --model.cameras / --model.image_size to match)")


def build_policy(cfg: TrainRunConfig, demos: ChunkedDemos) -> VLAPolicy:
    """A fresh policy (stats computed from the demos), or the one in output_dir when resuming."""
    last = last_checkpoint(cfg.train.output_dir)
    if cfg.train.resume and last.exists():
        policy = load_policy(last)
        policy.train()
        if demos.embodiment not in policy.normalizer.stats:
            raise ValueError(f"resuming {last}: it has no statistics for the dataset's embodiment {demos.embodiment!r}")
        return policy
    normalizer = Normalizer.from_demos(demos, cfg.model.normalization, cfg.model.max_action_dim,
                                       cfg.model.max_state_dim)
    return VLAPolicy(cfg.model, normalizer)


def make_optimizer(policy: VLAPolicy, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in policy.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, embeddings of one vector
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
    )
    return optimizer


def make_lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, done_steps: int):
    """Linear warmup, then cosine decay to lr * min_lr_ratio; `done_steps` > 0 continues a resumed run."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.optim.warmup_steps, cfg.steps, min_lr_rate=cfg.optim.min_lr_ratio, last_epoch=done_steps - 1)


def make_batch(demos: ChunkedDemos, batch_size: int, image_shift: int, generator: torch.Generator,
               n_obs_steps: int = 1) -> dict:
    batch = demos.sample(batch_size, generator, n_obs_steps)
    batch["images"] = random_shift(batch["images"], image_shift, generator)
    return batch


def save_checkpoint(accelerator: Accelerator, policy: VLAPolicy, optimizer, step: int, output_dir: str) -> Path:
    """Write checkpoints/step_N, then point checkpoints/last at it (a crash mid-write keeps the old last)."""
    target = checkpoint_dir(output_dir) / f"step_{step:07d}"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(policy)
        unwrapped.save_pretrained(target)
        save_training_state(target / "training_state", optimizer, step, {"seed_offset": step})
        link = last_checkpoint(output_dir)
        tmp = link.with_name("last.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(target.name)
        os.replace(tmp, link)
    accelerator.wait_for_everyone()
    return target


def train(cfg: TrainRunConfig) -> Path:
    """Train and return the path of the final checkpoint."""
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    demos = load_demos(cfg.model, cfg.data)
    policy = build_policy(cfg, demos)
    optimizer = make_optimizer(policy, cfg.train)
    last = last_checkpoint(out)
    start_step = 0
    if cfg.train.resume and last.exists():
        start_step = load_training_state(last / "training_state", optimizer)["step"]
        accelerator.print(f"resuming from {last.resolve().name} at step {start_step}")
    elif out.exists() and any(checkpoint_dir(out).glob("step_*")) and accelerator.is_main_process:
        raise FileExistsError(f"{out} already holds checkpoints; pass --train.resume=true to continue, "
                              f"or choose another --train.output_dir")
    scheduler = make_lr_schedule(optimizer, cfg.train, start_step)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    logger = ScalarLogger(out, enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(to_yaml(cfg))
        accelerator.print(f"policy: {count_parameters(policy) / 1e6:.2f}M parameters "
                          f"({count_parameters(policy, trainable_only=True) / 1e6:.2f}M trainable); "
                          f"{len(demos)} training frames")
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + accelerator.process_index + start_step)
    step = start_step
    started = time.time()
    window_loss, window_start = 0.0, time.time()
    progress = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    policy.train()
    while step < cfg.train.steps:
        batch = make_batch(demos, cfg.train.batch_size, cfg.data.image_shift, generator, cfg.model.n_obs_steps)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.autocast():
            loss = policy(batch)["loss"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; last checkpoint: {last}")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.train.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        window_loss += loss.item()
        progress.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            n = step % cfg.train.log_every or cfg.train.log_every
            scalars = {"loss": window_loss / n, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "s_per_step": (time.time() - window_start) / n}
            logger.log(step, scalars)
            progress.set_postfix(loss=f"{scalars['loss']:.4f}")
            window_loss, window_start = 0.0, time.time()
        out_of_time = cfg.train.time_limit_s > 0 and time.time() - started > cfg.train.time_limit_s
        if step % cfg.train.save_every == 0 or step == cfg.train.steps or out_of_time:
            save_checkpoint(accelerator, policy, optimizer, step, cfg.train.output_dir)
        if out_of_time:
            accelerator.print(f"time limit {cfg.train.time_limit_s:.0f}s reached at step {step}; stopping")
            break
    progress.close()
    logger.close()
    if accelerator.is_main_process:
        plot_loss_curve(out / "metrics.csv", out / "loss_curve.png")
    final = last_checkpoint(out).resolve()
    accelerator.end_training()
    return final


def main(args: list[str] | None = None) -> None:
    cfg = parse(TrainRunConfig, args)
    final = train(cfg)
    print(f"final checkpoint: {final}")


if __name__ == "__main__":
    main()
