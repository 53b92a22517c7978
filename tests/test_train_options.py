"""Training options in one process: EMA, the log backends and telemetry, the run folder's provenance, gradient
checkpointing, bf16 autocast, and the errors for a bad distributed setup (the 2-process jobs are in
test_distributed.py; freezing, init_from and LoRA in test_finetune.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vla.data.transforms import normalize_batch
from vla.policy import VLAPolicy
from vla.training import train as train_module
from vla.training.distributed import configure_deepspeed, make_accelerator
from vla.training.ema import WeightEMA
from vla.training.gradient_checkpointing import enable_gradient_checkpointing
from vla.training.logging import read_metrics
from vla.training.train import build_policy, load_demos, train

REPO = Path(__file__).resolve().parent.parent


def with_train(cfg, out, **changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(out), **changes))


# --- EMA ---------------------------------------------------------------------------------------------------------


def test_weight_ema_follows_its_decay_schedule_and_swaps_back():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # only trainable parameters are averaged
    ema = WeightEMA(model, decay=0.9)
    assert ema.names == ["weight"] and not ema.sharded
    expected = model.weight.detach().clone()
    for step in range(1, 30):
        with torch.no_grad():
            model.weight.add_(0.1 * step)
        ema.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * model.weight.detach()
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(1000) == 0.9
    assert torch.allclose(ema.shadow[0], expected, atol=1e-5)
    trained = model.weight.detach().clone()
    with ema.swapped_in():
        assert torch.equal(model.weight, ema.shadow[0])
    assert torch.equal(model.weight, trained)  # restored bit for bit
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightEMA(model, decay=1.0)


def test_ema_checkpoint_holds_the_average_and_resumes_exactly(tiny_run_config, tmp_path, monkeypatch):
    cfg = dict(steps=8, batch_size=4, save_every=4, log_every=1, keep_last=0, ema_decay=0.9, resume=True)
    reference = train(with_train(tiny_run_config, tmp_path / "reference", **cfg))
    meta = json.loads((reference / "meta.json").read_text())
    assert meta["training"]["weights"] == {"kind": "ema", "ema_decay": 0.9} and meta["training"]["steps"] == 8
    averaged = load_file(str(reference / "model.safetensors"))
    trained = load_file(str(reference / "training_state" / "model.safetensors"))
    moved = [k for k in trained if not torch.equal(averaged[k], trained[k])]
    # the EMA is not the trained weights, in the head and the backbone alike
    assert "head.net.action_in.weight" in moved and "backbone.cognition_token" in moved
    assert json.loads((reference / "export_check.json").read_text())["passed"]

    out = tmp_path / "resumed"
    calls = [0]
    original = train_module.make_batch

    def dies_at_step_6(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "make_batch", dies_at_step_6)
        with pytest.raises(KeyboardInterrupt):
            train(with_train(tiny_run_config, out, **cfg))
    assert (out / "checkpoints" / "last").resolve().name == "step_0000004"
    final = train(with_train(tiny_run_config, out, **cfg))
    resumed = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(resumed[k], averaged[k]) for k in averaged)  # EMA weights bit for bit
    assert read_metrics(out / "metrics.csv")["loss"] == read_metrics(tmp_path / "reference" / "metrics.csv")["loss"]


def test_lora_with_ema_exports_averaged_adapters_and_resumes_exactly(tiny_run_config, tmp_path, monkeypatch):
    """The EMA covers the adapters (and what trains beside them); the checkpoint merges the averaged adapters, its
    adapter/ holds them, and a killed run resumes to the same weights."""
    from test_resume import Killed, die_on_call

    lora = dataclasses.replace(tiny_run_config.train.lora, targets=["head.net.blocks.*.mlp.*"], train_also=["head"])
    cfg = dict(steps=6, batch_size=4, save_every=3, log_every=1, ema_decay=0.9, lora=lora, resume=True)
    whole = train(with_train(tiny_run_config, tmp_path / "whole", **cfg))
    assert json.loads((whole / "export_check.json").read_text())["passed"]  # the merged EMA acts as the live one
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 5)
        with pytest.raises(Killed):
            train(with_train(tiny_run_config, tmp_path / "stopped", **cfg))
    stopped = train(with_train(tiny_run_config, tmp_path / "stopped", **cfg))
    for name in ("model.safetensors", "adapter/adapter_model.safetensors", "adapter/full_weights.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(stopped / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    trained = load_file(str(whole / "training_state" / "model.safetensors"))
    adapters = load_file(str(whole / "adapter" / "adapter_model.safetensors"))
    name = next(k for k in trained if "lora_B" in k)  # B starts at 0; it moves once the blocks' gates do
    assert not torch.equal(trained[name], adapters["base_model.model." + name.replace(".default", "")])


# --- logging, telemetry, run folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["csv", "tensorboard", "wandb"])
def test_log_backend_switch_and_telemetry(tiny_run_config, tmp_path, backend, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default: no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / backend
    train(with_train(tiny_run_config, out, steps=4, batch_size=4, log_every=2, save_every=4, log_backend=backend))
    metrics = read_metrics(out / "metrics.csv")  # always written
    assert metrics["step"] == [2.0, 4.0] and metrics["samples"] == [8.0, 16.0]
    assert all(v > 0 for v in metrics["samples_per_s"] + metrics["peak_mem_mb"])
    assert all(0 <= v < 1 for v in metrics["data_wait_frac"])
    tb_files = list((out / "tb").glob("events.out.tfevents.*"))
    wandb_runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert bool(tb_files) == (backend == "tensorboard") and bool(wandb_runs) == (backend == "wandb")
    if backend == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "tb")).Reload()
        assert {"loss", "lr", "samples_per_s", "peak_mem_mb", "data_wait_frac"} <= set(events.Tags()["scalars"])
        assert [e.step for e in events.Scalars("loss")] == [2, 4]
    if backend == "wandb":
        logged = wandb_runs[0].read_bytes()
        assert b"samples_per_s" in logged and b"data_wait_frac" in logged
    info = json.loads((out / "run_info.json").read_text())["starts"][0]
    assert len(info["commit"]) == 40 and info["versions"]["torch"] and info["machine"]["cpu_cores"]
    assert info["distributed"]["backend"] == "single" and info["config"]["train"]["log_backend"] == backend
    assert (out / "train_config.yaml").exists()


# --- gradient checkpointing, precision -----------------------------------------------------------------


def test_gradient_checkpointing_recomputes_backbone_layers_with_the_same_gradients(tiny_run_config, monkeypatch):
    demos = load_demos(tiny_run_config.model, tiny_run_config.data)
    policy = build_policy(tiny_run_config, demos, None).train()
    batch = normalize_batch(policy.normalizer, demos.sample(4, torch.Generator().manual_seed(0)))
    layer, calls = policy.backbone.vlm.language_model.layers[0], [0]
    forward = type(layer).forward

    def counted(self, *args, **kwargs):  # a forward hook would not see the recomputation
        calls[0] += self is layer
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(layer), "forward", counted)

    def gradients() -> tuple[dict, int]:
        calls[0] = 0
        policy.zero_grad()
        torch.manual_seed(0)
        policy(batch)["loss"].backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}, calls[0]

    plain, plain_calls = gradients()
    enable_gradient_checkpointing(policy, tiny_run_config.model)
    checkpointed, checkpointed_calls = gradients()
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer ran again in backward
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    cache_head = SimpleNamespace(head=SimpleNamespace(reads_language_cache=True, type="ar"))
    with pytest.raises(ValueError, match="cannot be used with the ar head"):
        enable_gradient_checkpointing(policy, cache_head)


def test_bf16_autocast_training_exports_what_it_trained(tiny_run_config, tmp_path):
    """In its own process, as accelerate fixes the precision once per process."""
    import subprocess
    import sys

    from vla.config import to_yaml

    out = tmp_path / "bf16"
    cfg = with_train(tiny_run_config, out, steps=3, batch_size=4, log_every=1, save_every=3, mixed_precision="bf16",
                     grad_accum_steps=2)
    (tmp_path / "run.yaml").write_text(to_yaml(cfg))
    result = subprocess.run([sys.executable, "-m", "vla.training.train", f"--config_path={tmp_path / 'run.yaml'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out / "metrics.csv")
    assert all(torch.isfinite(torch.tensor(metrics["loss"])))
    assert metrics["samples"] == [8.0, 16.0, 24.0]
    final = (out / "checkpoints" / "last").resolve()
    check = json.loads((final / "export_check.json").read_text())
    assert check["passed"] and check["live_weights_dtype"] == "float32"  # autocast keeps fp32 weights
    assert isinstance(VLAPolicy.from_pretrained(final), VLAPolicy)


# --- a bad distributed setup --------------------------------------------------------------------------------------


def test_deepspeed_asked_for_but_not_installed_is_named(tiny_run_config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("vla.training.distributed.deepspeed_installed", lambda: False)
    with pytest.raises(ImportError, match="asks for DeepSpeed.*deepspeed package is not installed.*vla\\[deepspeed\\]"):
        make_accelerator(tiny_run_config.train)


def test_lora_under_deepspeed_or_fsdp_is_refused_by_name(tiny_run_config):
    from accelerate.utils import DistributedType

    from vla.training.train import build_trainable_policy

    lora = dataclasses.replace(tiny_run_config.train.lora, targets=["head.*"])
    cfg = dataclasses.replace(tiny_run_config, train=dataclasses.replace(tiny_run_config.train, lora=lora))
    for kind in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        with pytest.raises(ValueError, match="train.lora is not supported under DeepSpeed or FSDP.*ddp.yaml"):
            build_trainable_policy(SimpleNamespace(distributed_type=kind), cfg, None, None)


def test_launcher_precision_contradicting_the_config_is_refused(tiny_run_config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ValueError, match="mixed_precision: bf16.*--train.mixed_precision=no"):
        make_accelerator(tiny_run_config.train)


def fake_accelerator(ds_config: dict, processes: int = 2):
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=ds_config, zero3_init_flag=False)
    plugin.set_mixed_precision("no")
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=processes)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_shipped_deepspeed_configs_are_filled_from_the_vla_config(tiny_run_config, name):
    accelerator = fake_accelerator(json.loads((REPO / "configs" / "deepspeed" / f"{name}.json").read_text()))
    cfg = dataclasses.replace(tiny_run_config.train, batch_size=4, grad_accum_steps=3)
    configure_deepspeed(accelerator, cfg)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    batches = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batches == (4, 3, 24)  # 4 per process x 3 micro-batches x 2 processes
    assert ds["gradient_clipping"] == cfg.optim.grad_clip and ds["bf16"]["enabled"] is False


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds["zero_optimization"].pop("stage3_gather_16bit_weights_on_model_save"),
     "stage3_gather_16bit_weights_on_model_save"),
    (lambda ds: ds.update(optimizer={"type": "AdamW"}), "defines a 'optimizer'.*train.optim"),
    (lambda ds: ds.update(bf16={"enabled": True}), "enables bf16.*--train.mixed_precision=no"),
    (lambda ds: ds.update(gradient_clipping=0.5), "gradient_clipping=0.5 vs arg gradient_clipping=1.0"),
])
def test_deepspeed_settings_vla_cannot_honour_are_refused(tiny_run_config, change, message):
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
    change(ds)
    with pytest.raises(ValueError, match=message):
        configure_deepspeed(fake_accelerator(ds), tiny_run_config.train)


def test_accelerate_config_files_are_what_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    for name, kind in kinds.items():
        config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
        assert config.distributed_type == kind, name
        assert config.mixed_precision == ("no" if kind != "DEEPSPEED" else None), name  # DeepSpeed: from the JSON
        if kind == "DEEPSPEED":
            assert (REPO / config.deepspeed_config["deepspeed_config_file"]).exists()
            assert config.deepspeed_config["zero3_init_flag"] is False
        if kind == "FSDP":
            assert config.fsdp_config["fsdp_version"] == 2


def test_train_config_rejects_bad_values():
    from vla.config import TrainConfig

    for bad, message in [({"grad_accum_steps": 0}, "grad_accum_steps"), ({"ema_decay": 1.0}, "ema_decay"),
                         ({"log_backend": "mlflow"}, "log_backend"), ({"mixed_precision": "fp16"}, "mixed_precision")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
