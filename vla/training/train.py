"""The training loop: Accelerate, AdamW with warmup + cosine decay, clipping, logging, checkpoints.

    vla-train --config_path configs/train/metaworld_dit.yaml --train.steps 2000
    accelerate launch --multi_gpu --num_processes 2 train.py --config_path ...   (same code, 2 ranks)

Batches are drawn from an in-memory copy of the LeRobot dataset (see vla.data.dataset), each rank
with its own seed, so data-parallel ranks see different samples without a sharded DataLoader.
A token head's action tokenizer is fit on the dataset before the first step (vla.training.tokenizer_fit).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from vla.checkpoint import count_parameters, load_policy, load_tokenizer
from vla.config import DataConfig, ModelConfig, TrainConfig, parse, to_yaml
from vla.data.augment import random_shift
from vla.data.dataset import ChunkedDemos, load_chunked_demos
from vla.data.normalize import Normalizer
from vla.data.registry import Embodiment, load_embodiment
from vla.policy import VLAPolicy
from vla.provenance import differing_keys, flat_config
from vla.training.checkpoint import (
    load_rng_state,
    load_training_state,
    read_training_record,
    save_rng_state,
    save_training_state,
)
from vla.training.finetune import checkpoint_fingerprint, freeze, init_from_checkpoint, publish_init_report
from vla.training.logging import ScalarLogger, plot_loss_curve
from vla.training.lora import add_lora, load_adapter, save_trained
from vla.training.tokenizer_fit import describe, fit_action_tokenizer


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
    """The training frames of `data`; with an embodiment entry its keys are used and the model's image slots
    (model.cameras) are filled from the entry's camera mapping."""
    entry = load_embodiment(data.embodiment_config) if data.embodiment_config else None
    if entry is not None:
        check_normalization(entry, model.normalization)
    demos = load_chunked_demos(data.root, data.repo_id, chunk_size=model.head.horizon,
                               expected_action_dim=data.action_dim, expected_state_dim=data.state_dim,
                               embodiment=data.embodiment, action_kind=data.action_kind, entry=entry,
                               camera_slots=list(model.cameras) if entry is not None else None)
    check_observation_spec(model, demos)
    return demos


def check_normalization(entry: Embodiment, mode: str) -> None:
    """Refuse an entry whose normalisation the run would not apply: the policy's normaliser uses one mode
    (model.normalization) for every dimension; per-dimension modes come with per-sample transforms (issue 15
    item 3), and until then an entry asking for them must not be silently normalised otherwise."""
    modes = dict(zip(entry.action_names, entry.action_normalization, strict=True))
    modes |= {f"state {n}": m for n, m in zip(entry.state_names, entry.state_normalization, strict=True)}
    differ = {name: m for name, m in modes.items() if m != mode}
    if differ:
        raise ValueError(f"{entry.source} normalises {differ}, but this run normalises every dimension with "
                         f"model.normalization={mode!r} (per-dimension modes are not applied by the in-memory "
                         f"path yet): set the entry's normalization to {mode!r} without per-part overrides, or "
                         f"--model.normalization to the entry's")


def check_observation_spec(model: ModelConfig, demos: ChunkedDemos) -> None:
    """Fail before training, naming both sides, when the dataset's cameras differ from the model config's."""
    cameras = list(demos.camera_slots)
    size = tuple(demos.images.shape[2:4])
    if cameras != list(model.cameras) or size != (model.image_size, model.image_size):
        raise ValueError(f"dataset {demos.embodiment!r} has cameras {cameras} at {size[0]}x{size[1]} px; the model "
                         f"config expects {list(model.cameras)} at {model.image_size}x{model.image_size} px "
                         f"(set --model.cameras / --model.image_size to match)")


def build_policy(cfg: TrainRunConfig, demos: ChunkedDemos, resume_from: Path | None) -> VLAPolicy:
    """A fresh policy (stats computed from the demos), one started from train.init_from (vla.training.finetune), or
    the one in `resume_from` when resuming; then train.freeze and train.lora decide what trains.
    A LoRA run resumes by building its base as at step 0 and loading the checkpoint's adapters (vla.training.lora)."""
    init = None
    if resume_from is not None and not cfg.train.lora.targets:
        policy = load_policy(resume_from)
        policy.train()
        if demos.embodiment not in policy.normalizer.stats:
            raise ValueError(f"resuming {resume_from}: it has no statistics for the dataset's embodiment "
                             f"{demos.embodiment!r}")
    elif cfg.train.init_from:
        policy, init = init_from_checkpoint(cfg.model, demos, cfg.train.init_from,
                                            dataset=f"dataset {cfg.data.repo_id} at {cfg.data.root}")
        if resume_from is None:
            publish_init_report(init, cfg.train.output_dir)
    else:
        normalizer = Normalizer.from_demos(demos, cfg.model.normalization, cfg.model.max_action_dim,
                                           cfg.model.max_state_dim)
        policy = VLAPolicy(cfg.model, normalizer)
    fresh = init.fresh if init is not None else []
    if cfg.train.lora.targets:
        add_lora(policy, cfg.train.lora, fresh)
    freeze(policy, cfg.train.freeze, fresh)
    if resume_from is not None and cfg.train.lora.targets:  # the base as at step 0, then what the run trained
        load_adapter(policy, resume_from)
        if cfg.model.head.tokenizer_config is not None:
            policy.head.set_action_tokenizer(load_tokenizer(resume_from, policy.config, policy.embodiments))
    return policy


# settings that do not change what a run computes: they may differ when a run is resumed
RUN_CONTROL_FIELDS = frozenset({"train.output_dir", "train.resume", "train.resume_with_changes", "train.time_limit_s",
                                "train.log_every", "train.save_every", "train.keep_last",
                                "data.root"})  # the dataset's content is compared by fingerprint instead


def dataset_fingerprint(demos: ChunkedDemos) -> str:
    """sha256 of what the training frames are: every action, state, pad flag, episode and task, a strided
    sample of the images (all of them would cost seconds), the instructions, embodiment and camera layout."""
    digest = hashlib.sha256()
    for tensor in (demos.state, demos.actions, demos.action_is_pad, demos.episode_index, demos.task_index,
                   demos.images[:: max(1, len(demos) // 64)]):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps([demos.tasks, demos.embodiment, demos.camera_keys, list(demos.images.shape)]).encode())
    return digest.hexdigest()


def run_record(cfg: TrainRunConfig, demos: ChunkedDemos, num_processes: int) -> dict:
    """Everything a run's trajectory depends on; a checkpoint resumes exactly only under the same record."""
    config = {k: v for k, v in flat_config(cfg).items() if k not in RUN_CONTROL_FIELDS}
    if cfg.train.init_from:  # what the run starts from, not only where it was
        config["train.init_from (sha256)"] = checkpoint_fingerprint(cfg.train.init_from)
    return {"config": config, "dataset": dataset_fingerprint(demos), "frames": len(demos),
            "num_processes": num_processes}


def training_summary(cfg: TrainRunConfig, demos: ChunkedDemos, record: dict) -> dict:
    """What a checkpoint records about its training run (meta.json "training", shown on its model card); the
    step it was saved at is added by save_checkpoint."""
    dataset = {"repo_id": cfg.data.repo_id, "embodiment": demos.embodiment, "frames": len(demos),
               "episodes": int(demos.episode_index.unique().numel()), "tasks": list(demos.tasks),
               "fingerprint": record["run"]["dataset"]}
    return {"datasets": [dataset], "planned_steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "num_processes": record["run"]["num_processes"], "seed": cfg.train.seed}


def run_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two run records, e.g. ["train.steps: 3000 in the checkpoint, 4000 now"]."""
    old, new = saved["config"], current["config"]
    diffs = [f"{key}: {old.get(key, '<unset>')!r} in the checkpoint, {new.get(key, '<unset>')!r} now"
             for key in differing_keys(old, new)]
    if saved["dataset"] != current["dataset"]:
        diffs.append(f"dataset content: {saved['frames']} frames (sha256 {saved['dataset'][:12]}) in the checkpoint, "
                     f"{current['frames']} frames (sha256 {current['dataset'][:12]}) now")
    if saved["num_processes"] != current["num_processes"]:
        diffs.append(f"num_processes: {saved['num_processes']} in the checkpoint, {current['num_processes']} now")
    return diffs


def check_resumable(last: Path, saved: dict, current: dict, cfg: TrainConfig) -> list[str]:
    """Refuse, naming the differing fields and the way out, to resume `last` under a different run record;
    returns the differences that resume_with_changes lets through (recorded in the checkpoint's history)."""
    if "run" not in saved:
        raise ValueError(f"{last} was written by an older vla without RNG state and run record: it cannot be "
                         f"resumed exactly; choose a new --train.output_dir")
    step, diffs = saved["step"], run_differences(saved["run"], current)
    # as the model, what starts and what trains (its optimiser state has one slot per trainable tensor)
    model_diffs = [d for d in diffs if d.startswith(("model.", "num_processes", "train.init_from", "train.freeze",
                                                     "train.lora"))]
    if model_diffs:  # the weights, optimiser moments and per-rank RNG states fit only the run's own model and ranks
        raise ValueError(f"cannot resume {last} with a different model or number of processes ("
                         + "; ".join(model_diffs) + "): choose a new --train.output_dir")
    if diffs and not cfg.resume_with_changes:
        finished = step == saved["run"]["config"]["train.steps"]
        what = (f"holds a finished run (step {step} of train.steps={step}), which is reused, never extended"
                if finished else f"holds a run stopped at step {step}, which resumes only with the same settings")
        raise ValueError(f"{cfg.output_dir} {what}; this config differs in " + "; ".join(diffs) +
                         ". To train with these settings, choose a new --train.output_dir; to continue this run with "
                         "them anyway (its results then differ from one uninterrupted run), pass "
                         "--train.resume_with_changes=true")
    if step > cfg.steps:
        raise ValueError(f"{last} is at step {step}, past train.steps={cfg.steps}; choose a new --train.output_dir")
    return diffs


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


def on_any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when `flag` is True on any, so that every rank takes the same branch."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum") > 0)


def make_batch(demos: ChunkedDemos, batch_size: int, image_shift: int, generator: torch.Generator,
               n_obs_steps: int = 1) -> dict:
    batch = demos.sample(batch_size, generator, n_obs_steps)
    batch["images"] = random_shift(batch["images"], image_shift, generator)
    return batch


def save_checkpoint(accelerator: Accelerator, policy: VLAPolicy, optimizer, step: int, output_dir: str,
                    generator: torch.Generator, record: dict, keep_last: int = 0, training: dict | None = None) -> Path:
    """Write checkpoints/step_N atomically (into a temporary folder, renamed when complete, every rank adding its
    RNG state), then point checkpoints/last at it and delete all but the `keep_last` newest (0: keep all).
    A crash at any point leaves `last` at a complete checkpoint. `training`: `training_summary`, for meta.json."""
    folder = checkpoint_dir(output_dir)
    target, tmp = folder / f"step_{step:07d}", folder / f".step_{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
        summary = None if training is None else {**training, "steps": step, "history": record.get("history", [])}
        save_trained(accelerator.unwrap_model(policy), tmp, training=summary)
        save_training_state(tmp / "training_state", optimizer, step, record)
    accelerator.wait_for_everyone()
    save_rng_state(tmp / "training_state", accelerator.process_index, generator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():  # written before a crash after the step `last` points to; never last's own target
            shutil.rmtree(target)
        os.rename(tmp, target)
        link = last_checkpoint(output_dir)
        tmp_link = link.with_name("last.tmp")
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, link)
        # checkpoints after this one belong to an abandoned attempt (a crash before `last` moved): never kept
        abandoned = [p for p in folder.glob("step_*") if p.name > target.name]
        older = sorted(p for p in folder.glob("step_*") if p.name < target.name)
        for old in abandoned + (older[:max(len(older) - keep_last + 1, 0)] if keep_last > 0 else []):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def train(cfg: TrainRunConfig) -> Path:
    """Train and return the path of the final checkpoint.

    With train.resume, a run in output_dir continues exactly where its last checkpoint left it (weights,
    optimiser, LR schedule, every RNG of every rank, the loss window being logged): the losses after it equal
    those of one uninterrupted run. A finished run is returned as is. Other settings are refused (check_resumable).
    """
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    demos = load_demos(cfg.model, cfg.data)
    record = {"run": run_record(cfg, demos, accelerator.num_processes)}
    training = training_summary(cfg, demos, record)
    last = last_checkpoint(out)
    resume_from = last.resolve() if cfg.train.resume and last.exists() else None
    start_step = 0
    if resume_from is not None:
        saved = read_training_record(resume_from / "training_state")
        changes = check_resumable(last, saved, record["run"], cfg.train)
        start_step = saved["step"]
        record["history"] = saved.get("history", []) + (
            [{"step": start_step, "event": "resumed with changes", "changes": changes}] if changes else [])
        if start_step == cfg.train.steps:
            accelerator.print(f"{out} already holds the finished run (step {start_step}); reusing {resume_from.name}")
            if accelerator.is_main_process and (out / "metrics.csv").exists() and not (out / "loss_curve.png").exists():
                plot_loss_curve(out / "metrics.csv", out / "loss_curve.png")
            accelerator.end_training()
            return resume_from
    elif out.exists() and any(checkpoint_dir(out).glob("step_*")):  # every rank sees it and stops
        raise FileExistsError(f"{out} already holds checkpoints; pass --train.resume=true to continue, "
                              f"or choose another --train.output_dir")
    policy = build_policy(cfg, demos, resume_from)
    # token heads: a resumed or init_from policy has its tokenizer already
    if policy.head.action_tokenizer is None and cfg.model.head.tokenizer_config is not None:
        report = fit_action_tokenizer(policy, demos, out, accelerator.is_main_process, accelerator.wait_for_everyone)
        if report is not None:
            accelerator.print(describe(report))
    optimizer = make_optimizer(policy, cfg.train)
    if resume_from is not None:
        load_training_state(resume_from / "training_state", optimizer)
        accelerator.print(f"resuming from {resume_from.name} at step {start_step}")
    scheduler = make_lr_schedule(optimizer, cfg.train, start_step)
    # the scheduler stays outside accelerate.prepare: prepared, it steps once per process per optimiser step
    # (split_batches=False), so N ranks would run the warmup and decay N times too fast
    policy, optimizer = accelerator.prepare(policy, optimizer)
    logger = ScalarLogger(out, enabled=accelerator.is_main_process, start_step=start_step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(to_yaml(cfg))
        accelerator.print(f"policy: {count_parameters(policy) / 1e6:.2f}M parameters "
                          f"({count_parameters(policy, trainable_only=True) / 1e6:.2f}M trainable); "
                          f"{len(demos)} training frames")
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + accelerator.process_index)
    window_loss, window_steps = 0.0, 0  # the loss summed over the steps since the last log row
    if resume_from is not None:  # last: nothing may draw random numbers between this and the first batch
        load_rng_state(resume_from / "training_state", accelerator.process_index, generator)
        window_loss, window_steps = saved.get("window_loss", 0.0), saved.get("window_steps", 0)
    step = start_step
    started = window_start = time.time()
    progress = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    policy.train()
    while step < cfg.train.steps:
        batch = make_batch(demos, cfg.train.batch_size, cfg.data.image_shift, generator, cfg.model.n_obs_steps)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.autocast():
            loss = policy(batch)["loss"]
        if on_any_rank(accelerator, not math.isfinite(loss.item())):  # all ranks stop together
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; last checkpoint: {last}")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.train.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        window_loss, window_steps = window_loss + loss.item(), window_steps + 1
        progress.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            scalars = {"loss": window_loss / window_steps, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "s_per_step": (time.time() - window_start) / window_steps}
            logger.log(step, scalars)
            progress.set_postfix(loss=f"{scalars['loss']:.4f}")
            window_loss, window_steps, window_start = 0.0, 0, time.time()
        # decided together: a rank that saves while another trains on would deadlock at the barriers
        out_of_time = (cfg.train.time_limit_s > 0 and step < cfg.train.steps
                       and on_any_rank(accelerator, time.time() - started > cfg.train.time_limit_s))
        if out_of_time:
            record["history"] = record.get("history", []) + [
                {"step": step, "event": f"stopped by train.time_limit_s={cfg.train.time_limit_s:g}"}]
            accelerator.print(f"time limit train.time_limit_s={cfg.train.time_limit_s:g}s reached at step {step} of "
                              f"{cfg.train.steps}: stopping with a partial run (rerun with --train.resume=true to "
                              f"finish it)")
        if step % cfg.train.save_every == 0 or step == cfg.train.steps or out_of_time:
            save_checkpoint(accelerator, policy, optimizer, step, cfg.train.output_dir, generator,
                            {**record, "window_loss": window_loss, "window_steps": window_steps}, cfg.train.keep_last,
                            training)
        if out_of_time:
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
