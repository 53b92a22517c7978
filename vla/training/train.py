"""The training loop: Accelerate, AdamW with warmup + cosine decay, clipping, EMA, logging, checkpoints.

    vla-train --config_path configs/train/metaworld_dit.yaml --train.steps 2000
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 train.py --config_path ...
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 8 train.py ...
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 8 train.py ...
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 train.py ...
    torchrun --nproc_per_node 8 -m vla.training.train --config_path ...          (DDP, as ddp.yaml)

The same code runs every backend (vla.training.distributed): `--train.batch_size` is per process and micro-batch,
`--train.grad_accum_steps` micro-batches make one optimiser step, `--train.mixed_precision bf16` autocasts (DeepSpeed:
bf16 weights), `--train.gradient_checkpointing` recomputes the VLM's activations, `--train.ema_decay` keeps an EMA
whose weights the checkpoints hold; `--train.init_from`, `--train.freeze` and `--train.lora` decide what starts and
what trains (vla.training.finetune, vla.training.lora; LoRA not under ZeRO-3 / FSDP). Without CUDA the accelerate
configs run on CPU over gloo with `--num_processes 2` (the tests do this for each).

Batches come from a DataLoader over one dataset or a weighted mixture of them (data.mixture; vla.data.mixture): each
sample is normalised and padded with its own embodiment's statistics in the data pipeline (vla.data.transforms), so a
batch may mix robots of different widths; ranks draw disjoint shards of each dataset's epoch, and which samples a step
sees is a function of the seed, rank and step alone (a resumed run continues mid-epoch exactly).
A token head's action tokenizer is fit on the dataset before the first step (vla.training.tokenizer_fit).

Every checkpoint is a policy folder with the weights consolidated from all ranks (vla.training.export) plus
training_state/ for resuming (vla.training.checkpoint); after the last step the folder's predictions are checked
against the live model's (export_check.json). Decisions that start or end a run are taken by every rank together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from vla.checkpoint import count_parameters, load_policy, load_tokenizer
from vla.config import DataConfig, MixtureEntry, ModelConfig, TrainConfig, parse, to_yaml
from vla.data.dataset import ChunkedDemos, check_dim, is_action_free, load_chunked_demos
from vla.data.frames import LeRobotFrames
from vla.data.mixture import FrameSource, make_loader
from vla.data.normalize import Normalizer, entry_modes, has_actions
from vla.data.registry import load_embodiment
from vla.latent.labels import check_same_model
from vla.policy import VLAPolicy
from vla.provenance import differing_keys, flat_config, provenance
from vla.training.checkpoint import (
    SHARDED_STATE_DIR,
    load_rng_state,
    load_trained_weights,
    load_training_state,
    read_training_record,
    save_rng_state,
    save_trained_weights,
    save_training_state,
)
from vla.training.distributed import (
    decided_on_main,
    describe,
    forward_autocast,
    fsdp_layer_classes,
    gather_floats,
    is_sharded,
    make_accelerator,
    on_any_rank,
    whole_model_construction,
)
from vla.training.ema import WeightEMA
from vla.training.export import export_policy, verify_export, weights_record
from vla.training.finetune import checkpoint_fingerprint, freeze, init_from_checkpoint, publish_init_report
from vla.training.gradient_checkpointing import enable_gradient_checkpointing
from vla.training.logging import ScalarLogger, Telemetry, plot_loss_curve
from vla.training.lora import add_lora, load_adapter
from vla.training.tokenizer_fit import describe as describe_fit
from vla.training.tokenizer_fit import fit_action_tokenizer


@dataclass
class TrainRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def last_checkpoint(output_dir: str | Path) -> Path:
    return checkpoint_dir(output_dir) / "last"


def load_sources(model: ModelConfig, data: DataConfig) -> list[FrameSource]:
    """A frame source for every dataset of `data` (its mixture, or the one dataset): in memory (data.reader=memory,
    `ChunkedDemos`) or read per sample (stream, `LeRobotFrames`), images resized to model.image_size; with an
    embodiment entry its keys are used and the model's image slots (model.cameras) are filled from the entry's camera
    mapping (a slot the robot lacks is masked).

    A head that reads latent-action labels (`model.head.reads_latent_codes`) gets every dataset's labels, all of one
    latent action model (`check_same_model`); any other head refuses action-free datasets before anything is read.
    """
    sources = [load_dataset(model, data, spec) for spec in data.datasets()]
    if model.head.reads_latent_codes and len(sources) > 1:
        check_same_model({f"{spec.repo_id} at {spec.root}": source.latent_labels
                          for spec, source in zip(data.datasets(), sources, strict=True)})
    check_latent_labels(model, data.datasets(), sources)
    if len(sources) > 1 and model.head.tokenizer_config is not None:
        names = sorted({s.embodiment for s in sources})
        if len(names) > 1:
            raise ValueError(f"a {model.head.type} head's action tokenizer is fit on one embodiment; this mixture "
                             f"has {names}: train a continuous head (dit, dita, flow) on a cross-embodiment mixture")
    return sources


def check_latent_labels(model: ModelConfig, specs: list[MixtureEntry], sources: list[FrameSource]) -> None:
    """A head that trains on latent-action labels must predict as many tokens of as large a codebook as the
    datasets' labels have (a ValueError naming the dataset and both otherwise)."""
    if not model.head.reads_latent_codes:
        return
    for spec, source in zip(specs, sources, strict=True):
        labels = getattr(source, "latent_labels", None)
        if labels is not None:
            model.head.check_labels(labels, f"dataset {spec.repo_id} at {spec.root}")


def with_embodiment_parts(model: ModelConfig, sources: list[FrameSource]) -> ModelConfig:
    """`model` whose head has a part for every dataset embodiment that has actions (the latent head's action decoders;
    other heads are unchanged). A source without actions (`has_actions` False: action-free video) gets none."""
    names = [s.embodiment for s in sources if has_actions(s)]
    return dataclasses.replace(model, head=model.head.with_embodiment_parts(names))


def load_dataset(model: ModelConfig, data: DataConfig, spec: MixtureEntry) -> FrameSource:
    """One dataset's frame source (see load_sources); data.action_dim / state_dim are checked for data with actions,
    latent-action labels are read when the head trains on them."""
    entry = load_embodiment(spec.embodiment_config) if spec.embodiment_config else None
    if entry is not None:
        entry_modes(entry, model.normalization)  # an entry asking for another mode fails before its data is read
    latent = model.head.reads_latent_codes
    if not latent and is_action_free(spec.root, spec.repo_id, entry):
        raise ValueError(f"dataset {spec.repo_id} at {spec.root} has no actions (action-free video); the "
                         f"{model.head.type} head learns from actions only: train a head that reads latent-action "
                         f"labels (--model.head.type=latent, after labelling the dataset with `vla-latent label`) or "
                         f"leave this dataset out")
    if data.reader == "stream":
        frames = LeRobotFrames(spec.root, spec.repo_id, chunk_size=model.head.horizon, image_size=model.image_size,
                               n_obs_steps=model.n_obs_steps, entry=entry, embodiment=spec.embodiment,
                               action_kind=spec.action_kind,
                               camera_slots=list(model.cameras) if entry is not None else None, latent_labels=latent)
        if frames.has_actions:
            columns = frames.numeric()
            check_dim("action", columns["action"].shape[-1], data.action_dim)
            check_dim("state", columns["state"].shape[-1], data.state_dim)
        check_observation_spec(model, frames)
        return frames
    demos = load_chunked_demos(spec.root, spec.repo_id, chunk_size=model.head.horizon,
                               expected_action_dim=data.action_dim, expected_state_dim=data.state_dim,
                               embodiment=spec.embodiment, action_kind=spec.action_kind, entry=entry,
                               camera_slots=list(model.cameras) if entry is not None else None,
                               image_size=model.image_size, latent_labels=latent)
    demos.n_obs_steps = model.n_obs_steps
    check_observation_spec(model, demos)
    return demos


def load_demos(model: ModelConfig, data: DataConfig) -> ChunkedDemos:
    """The one dataset of `data`, in memory whatever data.reader says (for tools that index every frame: the BAC
    calibration, the verifier, tokenizer fitting commands); a mixture is an error here (see load_sources)."""
    if len(data.datasets()) != 1:
        raise ValueError(f"expected one dataset; data.mixture lists {len(data.mixture)}")
    return load_dataset(model, dataclasses.replace(data, reader="memory"), data.datasets()[0])


def check_observation_spec(model: ModelConfig, demos: FrameSource) -> None:
    """Fail before training, naming both sides, when the dataset's cameras (image slots) differ from the model
    config's (images are resized to model.image_size as they are read)."""
    cameras = list(demos.camera_slots)
    if cameras != list(model.cameras):
        raise ValueError(f"dataset {demos.embodiment!r} has cameras {cameras}; the model config expects "
                         f"{list(model.cameras)} (set --model.cameras to match, or map the cameras to the model's "
                         f"image slots with an embodiment entry: --data.embodiment_config)")


def build_policy(cfg: TrainRunConfig, sources: list[FrameSource] | FrameSource,
                 resume_from: Path | None) -> VLAPolicy:
    """A fresh policy (stats computed from the datasets), one started from train.init_from (vla.training.finetune), or
    the one in `resume_from` when resuming; then train.freeze and train.lora decide what trains. A fresh policy's head
    gets a part for every dataset embodiment that has actions (`with_embodiment_parts`: the latent head's decoders;
    init_from adds the dataset's to the checkpoint's). A LoRA run resumes by building its base as at step 0 and
    loading the checkpoint's adapters (vla.training.lora)."""
    sources = sources if isinstance(sources, list) else [sources]
    demos, init = sources[0], None
    if resume_from is not None and not cfg.train.lora.targets:
        policy = load_policy(resume_from)
        policy.train()
        unknown = sorted({s.embodiment for s in sources} - set(policy.normalizer.stats))
        if unknown:
            raise ValueError(f"resuming {resume_from}: it has no statistics for the datasets' embodiment(s) "
                             f"{unknown}")
    elif cfg.train.init_from:
        if len(sources) > 1:
            raise ValueError("train.init_from fine-tunes on one dataset; data.mixture lists several (fine-tuning on "
                             "a mixture is not supported yet)")
        policy, init = init_from_checkpoint(cfg.model, demos, cfg.train.init_from,
                                            dataset=f"dataset {cfg.data.repo_id} at {cfg.data.root}")
        if resume_from is None:
            publish_init_report(init, cfg.train.output_dir)
    else:
        normalizer = Normalizer.from_sources(sources, cfg.model.normalization, cfg.model.max_action_dim,
                                             cfg.model.max_state_dim)
        policy = VLAPolicy(with_embodiment_parts(cfg.model, sources), normalizer)
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
                                "train.log_every", "train.save_every", "train.keep_last", "train.log_backend",
                                "train.wandb_project", "train.verify_export",
                                # recomputation restores the RNG state: the same numbers, with less memory
                                "train.gradient_checkpointing",
                                # how frames are read: the same samples (tests/test_mixture.py, test_resume.py)
                                "data.num_workers", "data.reader",
                                "data.root"})  # the dataset's content is compared by fingerprint instead
# the saved weights, optimiser moments (one slot per trainable tensor), EMA and per-rank state fit only these: never
# resumed under other values
STATE_SHAPING = ("model.", "num_processes", "distributed", "train.init_from", "train.freeze", "train.lora",
                 "train.ema_decay")


def dataset_fingerprint(demos: FrameSource) -> str:
    """sha256 of what a frame source's training frames are: every state, action chunk (empty for action-free data),
    pad flag and episode, the latent-action codes when read, the images of 64 evenly spaced frames (all of them
    would cost seconds), the instructions, embodiment and image slots."""
    digest = hashlib.sha256()
    columns = demos.numeric()
    actions, pads = demos.chunks()
    probes = [demos[i] for i in range(0, len(demos), max(1, len(demos) // 64))]
    labels = getattr(demos, "latent_labels", None)
    codes = () if labels is None else (labels.codes,)
    for array in (columns["state"], actions, pads, demos.episode_index, *codes, *(p["images"] for p in probes),
                  *(p["instruction"].encode() for p in probes)):
        array = np.frombuffer(array, dtype=np.uint8) if isinstance(array, bytes) else np.asarray(array)
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([demos.tasks, demos.embodiment, demos.camera_slots]).encode())
    return digest.hexdigest()


def sources_fingerprint(sources: list[FrameSource]) -> str:
    """`dataset_fingerprint` of one dataset, or a digest of every dataset's in order (a mixture)."""
    if len(sources) == 1:
        return dataset_fingerprint(sources[0])
    return hashlib.sha256(" ".join(dataset_fingerprint(s) for s in sources).encode()).hexdigest()


def run_record(cfg: TrainRunConfig, sources: list[FrameSource] | FrameSource, num_processes: int,
               distributed: dict | None = None) -> dict:
    """Everything a run's trajectory depends on; a checkpoint resumes exactly only under the same record."""
    sources = sources if isinstance(sources, list) else [sources]
    config = {k: v for k, v in flat_config(cfg).items() if k not in RUN_CONTROL_FIELDS}
    if cfg.train.init_from:  # what the run starts from, not only where it was
        config["train.init_from (sha256)"] = checkpoint_fingerprint(cfg.train.init_from)
    return {"config": config, "dataset": sources_fingerprint(sources), "frames": sum(len(s) for s in sources),
            "num_processes": num_processes, "distributed": distributed or {"backend": "single"}}


def training_summary(cfg: TrainRunConfig, sources: list[FrameSource], record: dict) -> dict:
    """What a checkpoint records about its training run (meta.json "training", shown on its model card); the
    step it was saved at is added by save_checkpoint."""
    datasets = [{"repo_id": spec.repo_id, "embodiment": demos.embodiment, "frames": len(demos),
                 "episodes": len(np.unique(np.asarray(demos.episode_index))), "tasks": list(demos.tasks),
                 "fingerprint": dataset_fingerprint(demos) if len(sources) > 1 else record["run"]["dataset"],
                 **({"weight": spec.weight} if cfg.data.mixture else {}), **data_kind(demos)}
                for spec, demos in zip(cfg.data.datasets(), sources, strict=True)]
    return {"datasets": datasets, "planned_steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "grad_accum_steps": cfg.train.grad_accum_steps, "num_processes": record["run"]["num_processes"],
            "distributed": record["run"]["distributed"], "seed": cfg.train.seed}


def data_kind(source: FrameSource) -> dict:
    """What training_summary adds for a dataset beyond its size: "action_free" when it has no actions, and the latent
    action model its labels came from when they were read."""
    labels = getattr(source, "latent_labels", None)
    return {**({} if has_actions(source) else {"action_free": True}),
            **({} if labels is None else {"latent_labels": labels.meta()})}


def run_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two run records, e.g. ["train.steps: 3000 in the checkpoint, 4000 now"].
    A train or data setting the checkpoint's record lacks (added to vla after it was written, e.g. data.mixture)
    counts as its default."""
    new = current["config"]
    defaults = {f"{section}.{k}": v for section, config in (("train", TrainConfig()), ("data", DataConfig()))
                for k, v in flat_config(config).items()}
    old = {**{k: v for k, v in defaults.items() if k in new and k not in saved["config"]}, **saved["config"]}
    diffs = [f"{key}: {old.get(key, '<unset>')!r} in the checkpoint, {new.get(key, '<unset>')!r} now"
             for key in differing_keys(old, new)]
    if saved["dataset"] != current["dataset"]:
        diffs.append(f"dataset content: {saved['frames']} frames (sha256 {saved['dataset'][:12]}) in the checkpoint, "
                     f"{current['frames']} frames (sha256 {current['dataset'][:12]}) now")
    if saved["num_processes"] != current["num_processes"]:
        diffs.append(f"num_processes: {saved['num_processes']} in the checkpoint, {current['num_processes']} now")
    saved_backend = saved.get("distributed", {"backend": "ddp" if saved["num_processes"] > 1 else "single"})
    if saved_backend != current["distributed"]:
        diffs.append(f"distributed: {saved_backend} in the checkpoint, {current['distributed']} now")
    return diffs


def check_resumable(last: Path, saved: dict, current: dict, cfg: TrainConfig) -> list[str]:
    """Refuse, naming the differing fields and the way out, to resume `last` under a different run record;
    returns the differences that resume_with_changes lets through (recorded in the checkpoint's history)."""
    if "run" not in saved:
        raise ValueError(f"{last} was written by an older vla without RNG state and run record: it cannot be "
                         f"resumed exactly; choose a new --train.output_dir")
    step, diffs = saved["step"], run_differences(saved["run"], current)
    state_diffs = [d for d in diffs if d.startswith(STATE_SHAPING)]
    if state_diffs:  # the weights, optimiser moments, EMA and per-rank states fit only the run's own model and ranks
        raise ValueError(f"cannot resume {last} with a different model, number of processes, distributed backend, "
                         f"start, freezing, LoRA or EMA (" + "; ".join(state_diffs) + "): its weights, optimiser "
                         "shards and per-rank states fit only the run that wrote them; choose a new "
                         "--train.output_dir")
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


def plan_start(cfg: TrainConfig, run: dict) -> tuple[Path | None, dict | None, list[str]]:
    """(checkpoint to resume from or None, its training record, accepted changes); refuses an output folder that
    holds checkpoints without train.resume, or a resume under other settings. Decided by the main process."""
    out, last = Path(cfg.output_dir), last_checkpoint(cfg.output_dir)
    if cfg.resume and last.exists():
        saved = read_training_record(last.resolve() / "training_state")
        return last.resolve(), saved, check_resumable(last, saved, run, cfg)
    if out.exists() and any(checkpoint_dir(out).glob("step_*")):
        raise FileExistsError(f"{out} already holds checkpoints; pass --train.resume=true to continue, "
                              f"or choose another --train.output_dir")
    return None, None, []


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
    """Linear warmup, then cosine decay to lr * min_lr_ratio; `done_steps` > 0 continues a resumed run (whose
    optimiser state may be restored only later, by accelerator.load_state, so the base rate is set here)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.optim.warmup_steps, cfg.steps, min_lr_rate=cfg.optim.min_lr_ratio, last_epoch=done_steps - 1)


def make_batch(batches: Iterator[dict]) -> dict:
    """The next normalised batch of the run's DataLoader (vla.data.mixture.make_loader)."""
    return next(batches)


def make_batches(cfg: TrainRunConfig, sources: list[FrameSource], normalizer: Normalizer, rank: int,
                 world_size: int, start_step: int) -> Iterator[dict]:
    """This rank's batches from optimiser step `start_step` on (the mixture's position is the number of samples
    this rank drew before it)."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum_steps
    weights = [spec.weight for spec in cfg.data.datasets()]
    loader = make_loader(sources, weights, normalizer, cfg.train.batch_size, cfg.train.seed, rank, world_size,
                         start=start_step * per_step, image_shift=cfg.data.image_shift,
                         color_jitter=cfg.data.color_jitter,
                         num_workers=cfg.data.num_workers)
    return iter(loader)


def save_checkpoint(accelerator: Accelerator, policy, optimizer, step: int, output_dir: str, record: dict,
                    keep_last: int = 0, training: dict | None = None, ema: WeightEMA | None = None) -> Path:
    """Write checkpoints/step_N atomically (into a temporary folder, renamed when complete), then point
    checkpoints/last at it and delete all but the `keep_last` newest (0: keep all). A crash at any point leaves
    `last` at a complete checkpoint. Every rank takes part: the policy folder gets the weights consolidated from all
    ranks (the EMA's when on), each rank writes its partition of sharded state and its RNG state.
    `training`: `training_summary`, for meta.json (with the step, history and what the weights are)."""
    folder = checkpoint_dir(output_dir)
    target, tmp = folder / f"step_{step:07d}", folder / f".step_{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
    accelerator.wait_for_everyone()
    summary = None if training is None else {**training, "steps": step, "history": record.get("history", []),
                                             "weights": weights_record(ema)}
    export_policy(accelerator, policy, tmp, ema, summary)
    save_resume_state(accelerator, policy, optimizer, tmp / "training_state", step, record, ema)
    accelerator.wait_for_everyone()
    save_rng_state(tmp / "training_state", accelerator.process_index)
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


def save_resume_state(accelerator: Accelerator, policy, optimizer, folder: Path, step: int, record: dict,
                      ema: WeightEMA | None) -> None:
    """training_state/ except the RNG states: the record (rank 0), the optimiser - by rank 0 as safetensors, or under
    DeepSpeed / FSDP each rank's partition of weights and optimiser through accelerator.save_state - the trained
    weights when the policy folder holds the EMA's, and the EMA."""
    if is_sharded(accelerator):
        accelerator.save_state(str(folder / SHARDED_STATE_DIR))
        if accelerator.is_main_process:
            save_training_state(folder, None, step, record)
    elif accelerator.is_main_process:
        save_training_state(folder, optimizer, step, record)
        if ema is not None:
            save_trained_weights(folder, accelerator.unwrap_model(policy))
    if ema is not None:
        ema.save(folder, accelerator.process_index)


def build_trainable_policy(accelerator: Accelerator, cfg: TrainRunConfig, sources: list[FrameSource],
                           resume_from: Path | None) -> VLAPolicy:
    """The policy as it trains (build_policy: fresh, init_from or resumed, then train.freeze / train.lora), built whole
    on every rank, its action tokenizer fit (token heads that have none yet), gradient checkpointing on when asked."""
    if cfg.train.lora.targets and is_sharded(accelerator):
        raise ValueError("train.lora is not supported under DeepSpeed or FSDP: a LoRA checkpoint merges each adapter "
                         "into its layer's whole weight, which is partitioned or kept in DeepSpeed's flat buffers "
                         "there; launch with configs/accelerate/ddp.yaml (LoRA's small optimiser state needs no "
                         "sharding)")
    with whole_model_construction(accelerator):
        policy = build_policy(cfg, sources, resume_from)
    if policy.head.action_tokenizer is None and cfg.model.head.tokenizer_config is not None:
        report = fit_action_tokenizer(policy, sources[0], cfg.train.output_dir, accelerator.is_main_process,
                                      accelerator.wait_for_everyone)
        if report is not None:
            accelerator.print(describe_fit(report))
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(policy, cfg.model)
    accelerator.print(f"policy: {count_parameters(policy) / 1e6:.2f}M parameters "
                      f"({count_parameters(policy, trainable_only=True) / 1e6:.2f}M trainable); "
                      f"{sum(len(s) for s in sources)} frames")
    return policy


def write_run_info(out: Path, cfg: TrainRunConfig, accelerator: Accelerator, start_step: int) -> None:
    """<out>/run_info.json: for every (re)start of the run, the git commit, full config, command, library versions,
    machine, distributed setup and launcher environment (train_config.yaml keeps the config as YAML)."""
    path = out / "run_info.json"
    starts = json.loads(path.read_text())["starts"] if path.exists() else []
    versions = {}
    for name in ("deepspeed", "wandb", "tensorboard", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    launcher = {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("ACCELERATE_", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_WORLD_SIZE"))}
    starts.append({"step": start_step, **provenance(cfg), "more_versions": versions,
                   "distributed": {**describe(accelerator), "processes": accelerator.num_processes,
                                   "device": str(accelerator.device), "mixed_precision": cfg.train.mixed_precision},
                   "launcher_env": launcher})
    path.write_text(json.dumps({"starts": starts}, indent=1))


def train_step(accelerator: Accelerator, policy, optimizer, batches: Iterator[dict], cfg: TrainRunConfig,
               telemetry: Telemetry, step: int, last: Path) -> tuple[float, float]:
    """One optimiser step over train.grad_accum_steps micro-batches (accelerator.accumulate: gradients are summed and
    synchronised on the last one only); returns (mean micro-batch loss, gradient norm before clipping)."""
    losses, grad_norm = [], None
    for _ in range(cfg.train.grad_accum_steps):
        waiting = time.perf_counter()
        batch = make_batch(batches)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        telemetry.waited(time.perf_counter() - waiting)
        with accelerator.accumulate(policy):
            with forward_autocast(accelerator):
                loss = policy(batch)["loss"]
            if on_any_rank(accelerator, not math.isfinite(loss.item())):  # all ranks stop together
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; last checkpoint: {last}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.train.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return sum(losses) / len(losses), float("nan") if grad_norm is None else float(grad_norm)


def window_scalars(accelerator: Accelerator, telemetry: Telemetry, window_loss: float, window_steps: int,
                   samples_per_step: int) -> dict[str, float]:
    """The logged row: loss averaged over the window and over ranks; throughput; the slowest rank's data-wait share
    and the largest peak memory."""
    own = telemetry.window(window_steps, samples_per_step)
    ranks = gather_floats(accelerator, [window_loss / window_steps, own["data_wait_frac"], own["peak_mem_mb"]])
    return {"loss": float(ranks[:, 0].mean()), "s_per_step": own["s_per_step"],
            "samples_per_s": own["samples_per_s"], "data_wait_frac": float(ranks[:, 1].max()),
            "peak_mem_mb": float(ranks[:, 2].max())}


def prepare_training(accelerator: Accelerator, cfg: TrainRunConfig, sources: list[FrameSource],
                     resume_from: Path | None, start_step: int) -> tuple:
    """(policy, optimizer, scheduler, ema), prepared by accelerate, with the training state of `resume_from` restored:
    one process / DDP load the optimiser (and, under EMA, the trained weights) into the plain objects before
    `prepare`; DeepSpeed / FSDP load every rank's partition with accelerator.load_state after it; the EMA is built on
    the prepared weights (its pieces are the ranks' partitions) and then loaded."""
    policy = build_trainable_policy(accelerator, cfg, sources, resume_from)
    optimizer = make_optimizer(policy, cfg.train)
    sharded = is_sharded(accelerator)
    state = resume_from / "training_state" if resume_from is not None else None
    if state is not None and not sharded:
        load_training_state(state, optimizer)
        if cfg.train.ema_decay > 0:  # the policy folder holds the EMA weights; the trained ones are kept apart
            load_trained_weights(state, policy)
    scheduler = make_lr_schedule(optimizer, cfg.train, start_step)
    # the scheduler stays outside accelerate.prepare: prepared, it steps once per process per optimiser step
    # (split_batches=False), so N ranks would run the warmup and decay N times too fast; under DeepSpeed, prepared,
    # it would be handed to the engine. Kept here, it sets the rate on the AdamW's param groups, which the ZeRO
    # optimiser wrapping that AdamW (and FSDP's) steps with.
    if accelerator.distributed_type == DistributedType.FSDP:
        policy._no_split_modules = fsdp_layer_classes(policy)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if state is not None and sharded:
        accelerator.load_state(str(state / SHARDED_STATE_DIR))
    ema = WeightEMA(accelerator.unwrap_model(policy), cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    if ema is not None and state is not None:
        ema.load(state, accelerator.process_index)
    return policy, optimizer, scheduler, ema


def train(cfg: TrainRunConfig) -> Path:
    """Train and return the path of the final checkpoint.

    With train.resume, a run in output_dir continues exactly where its last checkpoint left it (weights,
    optimiser, LR schedule, EMA, every RNG of every rank, the loss window being logged): the losses after it equal
    those of one uninterrupted run. A finished run is returned as is. Other settings are refused (check_resumable).
    """
    accelerator = make_accelerator(cfg.train)
    set_seed(cfg.train.seed)  # the same on every rank while the model is built
    out = Path(cfg.train.output_dir)
    sources = load_sources(cfg.model, cfg.data)
    record = {"run": run_record(cfg, sources, accelerator.num_processes, describe(accelerator))}
    training = training_summary(cfg, sources, record)
    resume_from, saved, changes = decided_on_main(accelerator, lambda: plan_start(cfg.train, record["run"]))
    start_step = saved["step"] if saved is not None else 0
    if resume_from is not None:
        record["history"] = saved.get("history", []) + (
            [{"step": start_step, "event": "resumed with changes", "changes": changes}] if changes else [])
        if start_step == cfg.train.steps:
            accelerator.print(f"{out} already holds the finished run (step {start_step}); reusing {resume_from.name}")
            if accelerator.is_main_process and (out / "metrics.csv").exists() and not (out / "loss_curve.png").exists():
                plot_loss_curve(out / "metrics.csv", out / "loss_curve.png")
            accelerator.end_training()
            return resume_from
    state = resume_from / "training_state" if resume_from is not None else None
    policy, optimizer, scheduler, ema = prepare_training(accelerator, cfg, sources, resume_from, start_step)
    if resume_from is not None:
        accelerator.print(f"resuming from {resume_from.name} at step {start_step}")
    if accelerator.num_processes > 1:
        set_seed(cfg.train.seed, device_specific=True)  # each rank draws its own diffusion noise from here on
    logger = ScalarLogger(out, enabled=accelerator.is_main_process, start_step=start_step,
                          backend=cfg.train.log_backend, config=flat_config(cfg), project=cfg.train.wandb_project)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(to_yaml(cfg))
        write_run_info(out, cfg, accelerator, start_step)
    samples_per_step = cfg.train.batch_size * cfg.train.grad_accum_steps * accelerator.num_processes
    samples_seen = saved.get("samples_seen", start_step * samples_per_step) if saved is not None else 0
    window_loss, window_steps = 0.0, 0  # the loss summed over the steps since the last log row
    if resume_from is not None:  # last: nothing may draw random numbers between this and the first batch
        load_rng_state(state, accelerator.process_index)
        window = saved.get("window_loss", 0.0)  # one per rank (a float before per-rank windows were kept)
        window_loss = window[accelerator.process_index] if isinstance(window, list) else window
        window_steps = saved.get("window_steps", 0)
    last, step, final = last_checkpoint(out), start_step, resume_from
    started = time.time()
    telemetry = Telemetry(accelerator.device)
    batches = make_batches(cfg, sources, accelerator.unwrap_model(policy).normalizer, accelerator.process_index,
                           accelerator.num_processes, start_step)
    progress = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    policy.train()
    while step < cfg.train.steps:
        loss, grad_norm = train_step(accelerator, policy, optimizer, batches, cfg, telemetry, step, last)
        scheduler.step()
        step += 1
        samples_seen += samples_per_step
        if ema is not None:
            ema.update(step)
        window_loss, window_steps = window_loss + loss, window_steps + 1
        progress.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            scalars = {**window_scalars(accelerator, telemetry, window_loss, window_steps, samples_per_step),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "samples": samples_seen}
            logger.log(step, scalars)
            progress.set_postfix(loss=f"{scalars['loss']:.4f}")
            window_loss, window_steps = 0.0, 0
            telemetry.reset()
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
            windows = gather_floats(accelerator, [window_loss])[:, 0].tolist()
            final = save_checkpoint(accelerator, policy, optimizer, step, cfg.train.output_dir,
                                    {**record, "window_loss": windows, "window_steps": window_steps,
                                     "samples_seen": samples_seen, "samples_per_step": samples_per_step},
                                    cfg.train.keep_last, training, ema)
        if out_of_time:
            break
    progress.close()
    if cfg.train.verify_export and final is not None and final != resume_from:
        report = verify_export(accelerator, policy, final, sources, ema)
        if report.get("skipped"):
            accelerator.print(f"export check of {final.name} skipped: {report['skipped']}")
        else:
            ranks = (f"; its {report['ranks']} ranks agree within {report['ranks_max_abs_diff']:.2g}"
                     if report["ranks"] > 1 else "")
            accelerator.print(f"export check: {final.name} predicts the live model's actions within "
                              f"{report['max_abs_diff']:.2g}{ranks}")
    logger.close()
    if accelerator.is_main_process and (out / "metrics.csv").exists():  # none when stopped before its first row
        plot_loss_curve(out / "metrics.csv", out / "loss_curve.png")
    accelerator.end_training()
    return final


def main(args: list[str] | None = None) -> None:
    cfg = parse(TrainRunConfig, args)
    final = train(cfg)
    print(f"final checkpoint: {final}")


if __name__ == "__main__":
    main()
