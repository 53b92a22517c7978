"""The distributed backend of a run (single process, DDP, DeepSpeed ZeRO-2/3, FSDP2) and what every rank agrees on.

    accelerate launch --config_file configs/accelerate/ddp.yaml             --num_processes 8 train.py --config_path R
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 8 train.py --config_path R
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 8 train.py --config_path R
    accelerate launch --config_file configs/accelerate/fsdp.yaml            --num_processes 8 train.py --config_path R

`accelerate launch` hands the config file's choices to every process as ACCELERATE_* environment variables, which
`Accelerator()` reads; `make_accelerator` adds vla's settings on top (precision, gradient accumulation, the DeepSpeed
"auto" values) and refuses combinations that would fail later. Without CUDA the same files run over gloo on CPU
(what the tests do): DDP as accelerate's MULTI_CPU, DeepSpeed on its CPU accelerator, FSDP2 through
`_present_cpu_group_as_multi_device` (see there).

Sharded backends (ZeRO-3, FSDP) hold no rank with every weight: `full_weights` gathers them for inference on the live
model, `accelerator.get_state_dict` (called by every rank) consolidates them for the checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list
from torch import nn

from vla.config import TrainConfig

T = TypeVar("T")
DEEPSPEED_INSTALL = "pip install 'vla[deepspeed]' (DS_BUILD_OPS=0 pip install deepspeed==0.19.8 builds no CUDA ops)"


def requested_backend() -> str:
    """What the launcher asked for: "deepspeed", "fsdp" or "ddp" (plain data parallel, also for one process)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's Accelerator, on GPUs (NCCL) or, without CUDA, on CPU over gloo, for the backend the launcher asked
    for. Errors name what to change: DeepSpeed asked for but not installed, a launcher precision or accumulation that
    contradicts the vla config, DeepSpeed / FSDP settings vla cannot honour."""
    backend = requested_backend()
    if backend == "deepspeed" and not deepspeed_installed():
        raise ImportError(f"the accelerate config asks for DeepSpeed (distributed_type: DEEPSPEED), but the deepspeed "
                          f"package is not installed: {DEEPSPEED_INSTALL}, or launch with configs/accelerate/ddp.yaml")
    check_launcher_setting("ACCELERATE_MIXED_PRECISION", "mixed_precision", cfg.mixed_precision, "no",
                           "--train.mixed_precision")
    check_launcher_setting("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "gradient_accumulation_steps",
                           str(cfg.grad_accum_steps), "1", "--train.grad_accum_steps")
    kwargs = {"mixed_precision": cfg.mixed_precision, "gradient_accumulation_steps": cfg.grad_accum_steps}
    if torch.cuda.is_available():
        accelerator = Accelerator(**kwargs)
    elif backend == "deepspeed":  # cpu=False lets accelerate hand the run to DeepSpeed, whose CPU accelerator uses gloo
        accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    elif backend == "fsdp":
        _present_cpu_group_as_multi_device()
        accelerator = Accelerator(cpu=True, **kwargs)
    else:
        accelerator = Accelerator(cpu=True, **kwargs)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator, cfg)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ValueError("the accelerate config asks for FSDP version 1; vla supports FSDP2 (per-parameter sharding): "
                         "set fsdp_version: 2 in its fsdp_config (see configs/accelerate/fsdp.yaml)")
    return accelerator


def check_launcher_setting(env: str, key: str, wanted: str, default: str, flag: str) -> None:
    """Refuse a launcher (accelerate config) value that differs from the vla config's; its default means 'not set'."""
    given = os.environ.get(env)
    if given is not None and given not in (default, wanted):
        raise ValueError(f"the accelerate config sets {key}: {given}, but this run's config has {flag}={wanted}: "
                         f"vla takes it from its own config, so set {flag}={given} (or {key}: {default} in the "
                         f"accelerate config)")


def _present_cpu_group_as_multi_device() -> None:
    """Let accelerate apply its FSDP plugin to a CPU (gloo) process group.

    accelerate 1.15 turns FSDP on only for accelerator process groups (AcceleratorState switches to FSDP from
    MULTI_GPU-like types, never from MULTI_CPU), although FSDP2 itself shards and trains on CPU over gloo. So the
    group is set up as for CPU training and then recorded as multi-device before AcceleratorState reads it; the
    device stays the CPU. Only used without CUDA (tests, CPU machines)."""
    PartialState(cpu=True)
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def configure_deepspeed(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config's "auto" values from the vla config and refuse what vla cannot honour.

    There is no DataLoader for accelerate to read the batch size from (batches are drawn in memory), so the micro
    batch is set here; explicit values in the JSON that differ from the vla config are refused (accelerate's
    mismatch error names them). vla's own AdamW and warmup-cosine schedule run under DeepSpeed (the ZeRO optimiser
    wraps the AdamW), so the JSON may not define an optimizer or scheduler of its own."""
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"the DeepSpeed config defines a {section!r}; vla trains with its own AdamW and "
                             f"warmup-cosine schedule (train.optim), so remove the {section!r} section "
                             f"(see configs/deepspeed/zero2.json)")
    if plugin.zero3_init_flag:
        raise ValueError("the accelerate config sets zero3_init_flag: true; vla builds the model whole on every rank "
                         "(the backbone computes from its weights at construction) before DeepSpeed partitions it, "
                         "so set zero3_init_flag: false")
    precision = "bf16" if cfg.mixed_precision == "bf16" else None
    for dtype in ("fp16", "bf16"):
        if str(ds.get(dtype, {}).get("enabled", False)).lower() == "true" and dtype != precision:
            raise ValueError(f"the DeepSpeed config enables {dtype}, but this run has "
                             f"--train.mixed_precision={cfg.mixed_precision}: set {dtype}.enabled to \"auto\" in the "
                             f"JSON and choose the precision with --train.mixed_precision")
    plugin.deepspeed_config_process(
        must_match=True, train_micro_batch_size_per_gpu=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps, gradient_clipping=cfg.optim.grad_clip,
        train_batch_size=cfg.batch_size * cfg.grad_accum_steps * accelerator.num_processes)
    if plugin.zero_stage == 3 and not ds["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save"):
        raise ValueError("the DeepSpeed config uses ZeRO-3 without zero_optimization."
                         "stage3_gather_16bit_weights_on_model_save: true; vla consolidates the partitioned weights "
                         "into the checkpoint's model.safetensors, which needs it (see configs/deepspeed/zero3.json)")


def has_16bit_weights(accelerator: Accelerator) -> bool:
    """DeepSpeed with bf16 keeps the module's weights in bf16 (fp32 masters in the optimiser); elsewhere bf16 is
    autocast over fp32 weights."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    return str(accelerator.state.deepspeed_plugin.deepspeed_config.get("bf16", {}).get("enabled")).lower() == "true"


def weights_autocast(accelerator: Accelerator) -> AbstractContextManager:
    """bf16 autocast when the weights are bf16 (DeepSpeed), so that fp32 activations the heads make themselves
    (noise, timesteps, normalised states) meet them in bf16 matmuls; nothing otherwise."""
    if has_16bit_weights(accelerator):
        return torch.autocast(accelerator.device.type, dtype=torch.bfloat16)
    return nullcontext()


def forward_autocast(accelerator: Accelerator) -> AbstractContextManager:
    """The training forward's precision: accelerate's autocast (train.mixed_precision over fp32 weights), or, under
    DeepSpeed, whose bf16 weights accelerate leaves to it, `weights_autocast`."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return weights_autocast(accelerator)
    return accelerator.autocast()


def describe(accelerator: Accelerator) -> dict:
    """{"backend": single | ddp | deepspeed | fsdp, ...}: the part of the run record that a checkpoint's model and
    optimiser state depend on, beyond the process count (a ZeRO-3 checkpoint resumes only under ZeRO-3)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return {"backend": "deepspeed", "zero_stage": accelerator.state.deepspeed_plugin.zero_stage}
    if kind == DistributedType.FSDP:
        return {"backend": "fsdp", "version": 2}
    return {"backend": "ddp" if accelerator.num_processes > 1 else "single"}


def has_partitioned_weights(accelerator: Accelerator) -> bool:
    """ZeRO-3 and FSDP: no rank holds every weight (ZeRO-2 partitions only the optimiser and gradients)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


def is_sharded(accelerator: Accelerator) -> bool:
    """DeepSpeed and FSDP keep model and optimiser state partitioned per rank: saved with accelerator.save_state."""
    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def on_any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when `flag` is True on any, so that every rank takes the same branch."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum") > 0)


def decided_on_main(accelerator: Accelerator, decide: Callable[[], T]) -> T:
    """Run `decide` on the main process only and give every rank its result, or raise its error on every rank.

    For the decisions that start or end a run (reuse a finished run, resume from where, refuse an output folder that
    holds checkpoints, refuse a resume under other settings): a rank deciding alone could go on while another stops,
    and the one going on would wait for the other at its next collective forever."""
    if accelerator.num_processes == 1:
        return decide()
    outcome: list = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [decide(), None]
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            outcome = [None, error]
    broadcast_object_list(outcome, from_process=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def gather_floats(accelerator: Accelerator, values: list[float]) -> torch.Tensor:
    """[processes, len(values)]: every rank's values, on every rank."""
    local = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(local).cpu() if accelerator.num_processes > 1 else local.cpu()


@contextmanager
def whole_model_construction(accelerator: Accelerator) -> Iterator[None]:
    """Build HF models whole on every rank, also under ZeRO-3.

    accelerate registers the DeepSpeed config with transformers, whose from_pretrained / from_config then partition
    every weight as they create it (zero.Init); the backbone computes from its weights at construction (the
    cognition token's scale, image statistics, action-token rows), so it must see them whole. DeepSpeed partitions
    them in accelerator.prepare."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def fsdp_layer_classes(model: nn.Module) -> list[str]:
    """Class names FSDP shards as units: the VLM's own no-split layers (decoder layers, vision encoder layers) present
    in `model`; accelerate's TRANSFORMER_BASED_WRAP reads them from model._no_split_modules, as for an HF model."""
    present = {type(m).__name__ for m in model.modules()}
    vlm = model.backbone.vlm
    return sorted(set(vlm._get_no_split_modules("auto")) & present)


@contextmanager
def full_weights(accelerator: Accelerator, model: nn.Module) -> Iterator[nn.Module]:
    """The unwrapped model with every weight whole on every rank, for inference on the live model (every rank must
    enter). ZeRO-3 gathers its partitions (GatheredParameters), FSDP2 unshards the root's own parameters (its layers
    unshard themselves when called); other backends hold whole weights already."""
    module = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and has_partitioned_weights(accelerator):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield module
    elif accelerator.distributed_type == DistributedType.FSDP:
        module.unshard()
        try:
            yield module
        finally:
            module.reshard()
    else:
        yield module
