"""A training checkpoint's policy folder: the weights consolidated from every rank (the EMA when on), and a check that
the folder predicts what the live model predicts.

Both run on every rank: under ZeRO-3 and FSDP no rank holds every weight, so `accelerator.get_state_dict` (and the
live model's gathering, `full_weights`) are collectives; rank 0 writes and reads the folder.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from vla.checkpoint import load_policy, save_policy
from vla.data.dataset import ChunkedDemos
from vla.data.normalize import has_actions
from vla.training.distributed import (
    decided_on_main,
    full_weights,
    is_sharded,
    weights_autocast,
    whole_model_construction,
)
from vla.training.ema import WeightEMA
from vla.training.lora import save_trained
from vla.types import Observation

EXPORT_CHECK_FILE = "export_check.json"


def weights_record(ema: WeightEMA | None) -> dict:
    """What meta.json's "training" says the folder's weights are."""
    return {"kind": "trained"} if ema is None else {"kind": "ema", "ema_decay": ema.decay}


def export_policy(accelerator: Accelerator, model: nn.Module, folder: Path, ema: WeightEMA | None,
                  training: dict | None) -> None:
    """Write the policy folder (config, weights, statistics, model card) to `folder`: the EMA weights when `ema` is
    given, else the trained ones; `training` goes to meta.json. Every rank calls it; rank 0 writes. On one process
    and under DDP the module is saved as it is (save_trained: merged LoRA weights plus adapter/); under DeepSpeed and
    FSDP the weights are first consolidated on rank 0 by accelerator.get_state_dict (a collective: ZeRO-3 and FSDP
    gather the partitions; ZeRO-2's weights are views into flat buffers, which it copies out)."""
    module = accelerator.unwrap_model(model)
    with ema.swapped_in() if ema is not None else nullcontext():
        if not is_sharded(accelerator):
            if accelerator.is_main_process:
                save_trained(module, folder, training=training)
            return
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            save_policy(module, folder, training=training, weights=state)


def probe_observation(sources: list | ChunkedDemos) -> Observation | None:
    """Two training frames of each dataset that has actions (the first and the middle one, with their history: frame
    sources return the history they were built with) to compare predictions on; states are zero-padded to the widest
    dataset's (as a batch mixing embodiments is). None when no dataset has actions (action-free video: the policy
    acts for no embodiment of them)."""
    sources = sources if isinstance(sources, list) else [sources]
    sources = [source for source in sources if has_actions(source)]
    if not sources:
        return None
    samples = [source[i] for source in sources for i in (0, len(source) // 2)]
    width = max(len(s["state"]) for s in samples)
    state = torch.stack([torch.nn.functional.pad(torch.as_tensor(s["state"]).float(), (0, width - len(s["state"])))
                         for s in samples])
    return Observation(images=torch.stack([torch.as_tensor(s["images"]) for s in samples]), state=state,
                       instruction=[s["instruction"] for s in samples],
                       embodiment=[s["embodiment"] for s in samples],
                       image_mask=torch.stack([torch.as_tensor(s["image_mask"]) for s in samples]))


def verify_export(accelerator: Accelerator, model: nn.Module, checkpoint: Path,
                  sources: list[ChunkedDemos] | ChunkedDemos, ema: WeightEMA | None) -> dict:
    """Check that `checkpoint` predicts the live model's actions and that every rank's live model agrees.

    Every rank predicts the probe observation with the live model (the EMA swapped in when on; fixed sampling noise);
    rank 0 loads the checkpoint as deploy does (load_policy) and predicts the same, in the live model's dtypes
    (`with_dtypes`). The report is written to <checkpoint>/export_check.json; a difference beyond float tolerance is
    raised on every rank."""
    obs = probe_observation(sources)
    if obs is None:  # nothing to act on: the check is skipped, and says so
        report = {"checkpoint": checkpoint.name, "passed": None,
                  "skipped": "no training dataset has actions, so the policy predicts actions for none of them"}
        if accelerator.is_main_process:
            (checkpoint / EXPORT_CHECK_FILE).write_text(json.dumps(report, indent=2))
        return report
    with ema.swapped_in() if ema is not None else nullcontext(), full_weights(accelerator, model) as module:
        training, dtype = module.training, next(module.parameters()).dtype
        dtypes = {name: t.dtype for name, t in [*module.named_parameters(), *module.named_buffers()]}
        module.eval()
        with weights_autocast(accelerator):
            live = module.predict(obs, generator=torch.Generator().manual_seed(0)).actions  # [B, H, D], CPU
        module.train(training)
    every_rank = _gather(accelerator, live)

    def compare() -> dict:
        with whole_model_construction(accelerator):
            device = "cpu" if accelerator.device.type == "cpu" else accelerator.device  # safetensors: no "cpu:0"
            saved = with_dtypes(load_policy(checkpoint, device=device), dtypes)
        with weights_autocast(accelerator):
            actions = saved.predict(obs, generator=torch.Generator().manual_seed(0)).actions
        tolerance = 1e-4 * max(1.0, float(live.abs().max()))
        meta = json.loads((checkpoint / "meta.json").read_text())
        report = {"checkpoint": checkpoint.name, "weights": (meta.get("training") or {}).get("weights"),
                  "live_weights_dtype": str(dtype).removeprefix("torch."),
                  "max_abs_diff": float((actions - live).abs().max()),
                  "ranks": accelerator.num_processes,
                  "ranks_max_abs_diff": float((every_rank - every_rank[0]).abs().max()),
                  "tolerance": tolerance, "probe_actions": live.tolist()}
        report["passed"] = report["max_abs_diff"] <= tolerance and report["ranks_max_abs_diff"] <= tolerance
        (checkpoint / EXPORT_CHECK_FILE).write_text(json.dumps(report, indent=2))
        if not report["passed"]:
            raise RuntimeError(f"export check failed for {checkpoint}: its actions differ from the live model's by "
                               f"{report['max_abs_diff']:.3g} (ranks among themselves by "
                               f"{report['ranks_max_abs_diff']:.3g}; tolerance {tolerance:.3g}); see "
                               f"{checkpoint / EXPORT_CHECK_FILE}")
        return report

    return decided_on_main(accelerator, compare)


def with_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype]) -> nn.Module:
    """`model` with each parameter and buffer in the live model's dtype (DeepSpeed with bf16 keeps bf16 weights and
    its own choice of buffers), so that both compute the same; deploy runs the checkpoint in fp32, more precisely."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name in dtypes and tensor.dtype != dtypes[name]:
            tensor.data = tensor.data.to(dtypes[name])
    return model


def _gather(accelerator: Accelerator, actions: torch.Tensor) -> torch.Tensor:
    """[processes, B * H * D]: every rank's live actions."""
    flat = actions.flatten()[None].to(accelerator.device)
    return (accelerator.gather(flat) if accelerator.num_processes > 1 else flat).cpu()
