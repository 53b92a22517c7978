"""Fine-tuning a trained policy (issue 11 item 4): train.init_from, train.freeze and train.lora on tiny configs.

The pretrained policy is conftest's tiny_checkpoint (dit on the tiny Meta-World demos, embodiment
metaworld_sawyer, 4-D actions, 7-D state); new embodiments are those demos under another name, and a synthetic
LeRobot dataset of a wider robot (6-D actions, 9-D state).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import peft
import pytest
import torch
from safetensors.torch import load_file

from vla.action_heads import ARHeadConfig
from vla.backbones.config import BackboneConfig
from vla.checkpoint import TOKENIZER_DIR, load_policy
from vla.config import ModelConfig
from vla.data.embodiment import EmbodimentInfo, write_action_kind
from vla.data.normalize import Normalizer, compute_stats
from vla.data.registry import load_embodiment
from vla.training.finetune import INIT_REPORT, extend_normalizer
from vla.training.lora import ADAPTER_DIR, ADAPTER_WEIGHTS, FULL_WEIGHTS, PEFT_PREFIX
from vla.training.train import build_policy, load_demos, train
from vla.types import Observation

WIDE_ACTION, WIDE_STATE, SIZE = 6, 9, 32
# what depends on the padded widths in the tiny dit head: the action embedding and output projection
# (their weights), the state projection (its weight); biases of the input layers keep their shape
WIDTH_LAYERS = {"head.net.action_in.weight", "head.net.final.proj.weight", "head.net.final.proj.bias",
                "head.state_proj.weight"}


@pytest.fixture(scope="module")
def wide_dataset(tmp_path_factory):
    """A LeRobot dataset of a robot with 6-D actions and 9-D state, one corner camera at 32 px, no robot_type
    (2 episodes x 12 frames, written with lerobot's own API)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("wide") / "data"
    image = {"dtype": "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    dataset = LeRobotDataset.create(
        repo_id="lab/wide", fps=20, root=root, robot_type=None, use_videos=False,
        features={"observation.images.corner": image,
                  "observation.state": {"dtype": "float32", "shape": (WIDE_STATE,), "names": None},
                  "action": {"dtype": "float32", "shape": (WIDE_ACTION,), "names": None}})
    rng = np.random.default_rng(0)
    for _ in range(2):
        for frame in range(12):
            dataset.add_frame({"observation.images.corner": rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
                               "observation.state": rng.normal(size=WIDE_STATE).astype(np.float32),
                               "action": np.sin(frame / 3 + np.arange(WIDE_ACTION)).astype(np.float32),
                               "task": "reach the goal"})
        dataset.save_episode()
    dataset.finalize()
    write_action_kind(root, "joint_position")
    return root


def finetune(cfg, checkpoint, out, model=None, data=None, **train_changes):
    """tiny_run_config fine-tuning from `checkpoint` into `out` (2 steps unless told)."""
    changes = {"output_dir": str(out), "init_from": str(checkpoint), "steps": 2, "batch_size": 4,
               "save_every": 100, "log_every": 1, **train_changes}
    return dataclasses.replace(cfg, model=model or cfg.model, data=data or cfg.data,
                               train=dataclasses.replace(cfg.train, **changes))


def wide_config(cfg, wide_dataset, embodiment="wide_arm"):
    model = dataclasses.replace(cfg.model, max_action_dim=WIDE_ACTION, max_state_dim=WIDE_STATE)
    data = dataclasses.replace(cfg.data, root=str(wide_dataset), repo_id="lab/wide", embodiment=embodiment)
    return model, data


def observation(demos, embodiment: str, n: int = 3) -> Observation:
    index = torch.arange(n) * 7
    return Observation(images=demos.images[index], state=demos.state[index],
                       instruction=demos.instructions(index), embodiment=[embodiment] * n)


def predict(policy, obs) -> torch.Tensor:
    return policy.eval().predict(obs, generator=torch.Generator().manual_seed(0)).actions


@pytest.fixture(scope="module")
def sawyer_demos(tiny_run_config):
    return load_demos(tiny_run_config.model, tiny_run_config.data)


def test_init_from_keeps_the_pretrained_policy_and_adds_the_new_embodiment(tiny_run_config, tiny_checkpoint,
                                                                           sawyer_demos, tmp_path):
    pretrained = load_policy(tiny_checkpoint)
    data = dataclasses.replace(tiny_run_config.data, embodiment="sawyer_b")  # the same frames, another robot name
    cfg = finetune(tiny_run_config, tiny_checkpoint, tmp_path, data=data)
    policy = build_policy(cfg, load_demos(cfg.model, cfg.data), None)
    report = json.loads((tmp_path / INIT_REPORT).read_text())
    assert report["reinitialised"] == {} and report["new"] == [] and report["unused"] == []
    assert sorted(report["loaded"]) == sorted(pretrained.state_dict())
    assert report["embodiments"] == {"pretrained": ["metaworld_sawyer"], "dataset": "sawyer_b",
                                     "statistics": "added"}
    obs = observation(sawyer_demos, "metaworld_sawyer")
    assert torch.equal(predict(policy, obs), predict(pretrained, obs))  # unchanged before training
    assert policy.normalizer.stats["metaworld_sawyer"] == pretrained.normalizer.stats["metaworld_sawyer"]
    assert policy.normalizer.info["metaworld_sawyer"] == pretrained.normalizer.info["metaworld_sawyer"]
    assert policy.embodiments == ["metaworld_sawyer", "sawyer_b"]
    final = train(cfg)  # two steps on sawyer_b: the pretrained embodiment's statistics stay as they were
    saved = json.loads((final / "norm_stats.json").read_text())
    assert saved["stats"]["metaworld_sawyer"] == pretrained.normalizer.stats["metaworld_sawyer"]
    assert saved["stats"]["sawyer_b"] == policy.normalizer.stats["sawyer_b"]


def test_dataset_of_a_known_embodiment_uses_the_checkpoint_statistics(tiny_run_config, tiny_checkpoint, tmp_path):
    pretrained = load_policy(tiny_checkpoint)
    one_task = dataclasses.replace(tiny_run_config.data)  # the same embodiment: its statistics are reused as they are
    cfg = finetune(tiny_run_config, tiny_checkpoint, tmp_path, data=one_task)
    policy = build_policy(cfg, load_demos(cfg.model, cfg.data), None)
    assert policy.normalizer.stats == pretrained.normalizer.stats
    assert json.loads((tmp_path / INIT_REPORT).read_text())["embodiments"]["statistics"] == "the checkpoint's"


def test_wider_robot_reinitialises_exactly_the_width_dependent_layers(tiny_run_config, tiny_checkpoint,
                                                                      wide_dataset, tmp_path):
    pretrained = load_policy(tiny_checkpoint).state_dict()
    model, data = wide_config(tiny_run_config, wide_dataset)
    cfg = finetune(tiny_run_config, tiny_checkpoint, tmp_path, model=model, data=data)
    policy = build_policy(cfg, load_demos(cfg.model, cfg.data), None)
    report = json.loads((tmp_path / INIT_REPORT).read_text())
    assert set(report["reinitialised"]) == WIDTH_LAYERS and report["new"] == []
    assert report["reinitialised"]["head.net.action_in.weight"] == [[32, 4], [32, WIDE_ACTION]]
    assert report["reinitialised"]["head.state_proj.weight"] == [[32, 7], [32, WIDE_STATE]]
    assert "model.max_action_dim: 4 -> 6" in report["config_changes"]
    for name, tensor in policy.state_dict().items():
        if name not in WIDTH_LAYERS:
            assert torch.equal(tensor, pretrained[name]), name
    assert policy.normalizer.action_dim("wide_arm") == WIDE_ACTION
    assert policy.normalizer.action_dim("metaworld_sawyer") == 4
    final = train(cfg)
    wide = load_policy(final)
    obs = Observation(images=torch.zeros(2, 1, SIZE, SIZE, 3, dtype=torch.uint8), state=torch.zeros(2, WIDE_STATE),
                      instruction=["reach the goal"] * 2, embodiment=["wide_arm"] * 2)
    assert wide.predict(obs).actions.shape == (2, tiny_run_config.model.head.horizon, WIDE_ACTION)


def test_freeze_keeps_frozen_parameters_bit_identical(tiny_run_config, tiny_checkpoint, tmp_path):
    pretrained = load_policy(tiny_checkpoint).state_dict()
    cfg = finetune(tiny_run_config, tiny_checkpoint, tmp_path, steps=3,
                   freeze=["backbone.vision", "head.net.blocks.0"])
    trained = load_policy(train(cfg)).state_dict()
    frozen = [n for n in trained if n.startswith(("backbone.vlm.vision_tower.", "backbone.vlm.multi_modal_projector.",
                                                  "head.net.blocks.0."))]
    assert len(frozen) > 20
    for name in frozen:
        assert torch.equal(trained[name], pretrained[name]), name
    moved = [n for n in trained if n not in frozen and not torch.equal(trained[n], pretrained[n])]
    assert any(n.startswith("backbone.vlm.language_model.") for n in moved)
    assert any(n.startswith("head.net.blocks.1.") for n in moved)


LORA_TARGETS = ["backbone.language.*_proj", "head.net.blocks.*.mlp.*"]


def test_lora_trains_only_adapters_and_the_merged_checkpoint_acts_the_same(tiny_run_config, tiny_checkpoint,
                                                                           sawyer_demos, tmp_path, train_on_batch):
    pretrained = load_policy(tiny_checkpoint).state_dict()
    lora = dataclasses.replace(tiny_run_config.train.lora, targets=LORA_TARGETS, r=4, alpha=8.0,
                               train_also=["head.net.final"])
    cfg = finetune(tiny_run_config, tiny_checkpoint, tmp_path / "run", steps=4, lora=lora)
    policy = build_policy(cfg, sawyer_demos, None)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.net.final.") for n in trainable)
    assert any(n.startswith("backbone.vlm.language_model.layers.0.self_attn.q_proj.lora_A") for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    batch = sawyer_demos.sample(8, torch.Generator().manual_seed(0))
    losses = train_on_batch(policy, batch, steps=30, lr=3e-3)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    final = train(cfg)
    merged = load_policy(final)  # plain names, no peft
    assert not any("lora" in n or "base_layer" in n for n in load_file(str(final / "model.safetensors")))
    unmerged = build_policy(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True)),
                            sawyer_demos, final)  # the base as at step 0 + the saved adapters
    obs = observation(sawyer_demos, "metaworld_sawyer")
    assert torch.allclose(predict(merged, obs), predict(unmerged, obs), atol=1e-5)
    for name, tensor in merged.state_dict().items():  # what LoRA did not adapt or train is the checkpoint's
        adapted = name.removesuffix(".weight") in unmerged.peft_config["default"].target_modules
        if not adapted and not name.startswith("head.net.final."):
            assert torch.equal(tensor, pretrained[name]), name
    trained = [n for n, t in merged.state_dict().items() if not torch.equal(t, pretrained[n])]
    assert "head.net.final.proj.weight" in trained and "head.net.blocks.1.mlp.2.weight" in trained
    assert "backbone.vlm.language_model.layers.1.self_attn.v_proj.weight" in trained

    adapter = final / ADAPTER_DIR  # peft's own format: PeftModel loads it onto the base + the fully trained tensors
    assert peft.LoraConfig.from_pretrained(str(adapter)).r == 4
    assert all(k.startswith(PEFT_PREFIX) for k in load_file(str(adapter / ADAPTER_WEIGHTS)))
    base = load_policy(tiny_checkpoint)
    base.load_state_dict(load_file(str(adapter / FULL_WEIGHTS)), strict=False)
    with_peft = peft.PeftModel.from_pretrained(base, str(adapter))
    assert torch.allclose(predict(with_peft.base_model.model, obs), predict(merged, obs), atol=1e-5)


def test_lora_run_with_frozen_parts_resumes_exactly(tiny_run_config, tiny_checkpoint, tmp_path, monkeypatch):
    from test_resume import Killed, die_on_call

    from vla.training import train as train_module
    from vla.training.logging import read_metrics

    lora = dataclasses.replace(tiny_run_config.train.lora, targets=["head.net.blocks.*.mlp.*"], train_also=["head"])
    changes = {"steps": 6, "save_every": 3, "resume": True, "lora": lora, "freeze": ["head.net.final"]}
    whole = finetune(tiny_run_config, tiny_checkpoint, tmp_path / "whole", **changes)
    train(whole)
    stopped = finetune(tiny_run_config, tiny_checkpoint, tmp_path / "stopped", **changes)
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 5)
        with pytest.raises(Killed):
            train(stopped)
    train(stopped)
    a, b = (read_metrics(tmp_path / name / "metrics.csv") for name in ("whole", "stopped"))
    assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)


@pytest.fixture(scope="module")
def ar_checkpoint(tiny_run_config, tmp_path_factory):
    """A tiny ar-head (bins) checkpoint after 2 steps on the tiny demos (metaworld_sawyer)."""
    from vla.tokenizers import BinsTokenizerConfig

    model = dataclasses.replace(tiny_run_config.model, head=ARHeadConfig(horizon=4,
                                                                         tokenizer=BinsTokenizerConfig(n_bins=16)))
    out = tmp_path_factory.mktemp("ar")
    cfg = dataclasses.replace(tiny_run_config, model=model, train=dataclasses.replace(
        tiny_run_config.train, output_dir=str(out), steps=2, batch_size=4))
    return train(cfg), model


def same_files(a, b) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_token_head_reuses_the_checkpoint_tokenizer_on_its_embodiment(ar_checkpoint, tiny_run_config,
                                                                      sawyer_demos, tmp_path):
    checkpoint, model = ar_checkpoint
    pretrained = load_policy(checkpoint)
    cfg = finetune(tiny_run_config, checkpoint, tmp_path, model=model)
    policy = build_policy(cfg, sawyer_demos, None)
    policy.head.action_tokenizer.save(tmp_path / "attached")
    assert same_files(tmp_path / "attached", checkpoint / TOKENIZER_DIR)
    obs = observation(sawyer_demos, "metaworld_sawyer")
    assert torch.equal(predict(policy, obs), predict(pretrained, obs))
    assert "reused" in json.loads((tmp_path / INIT_REPORT).read_text())["action_tokenizer"]
    final = train(cfg)
    assert not (tmp_path / "action_tokenizer_fit.json").exists()  # not refit
    assert same_files(final / TOKENIZER_DIR, checkpoint / TOKENIZER_DIR)


def test_bad_fine_tuning_inputs_are_refused_by_name(tiny_run_config, tiny_checkpoint, ar_checkpoint, wide_dataset,
                                                    sawyer_demos, tmp_path):
    def refused(cfg, demos=None, match=""):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            build_policy(cfg, demos if demos is not None else load_demos(cfg.model, cfg.data), None)

    base = finetune(tiny_run_config, tiny_checkpoint, tmp_path)
    smol = dataclasses.replace(base.model, backbone=BackboneConfig(family="smolvlm", pretrained="HuggingFaceTB/x"))
    refused(dataclasses.replace(base, model=smol), sawyer_demos,
            r"holds a paligemma backbone; this run's model.backbone.family is 'smolvlm'")
    lora = dataclasses.replace(base.train.lora, targets=["head.*", "backbone.no_such_module.*"])
    refused(dataclasses.replace(base, train=dataclasses.replace(base.train, lora=lora)), sawyer_demos,
            r"'backbone.no_such_module.\*' matches no linear layer; the policy's modules are \[.*'head.net'")
    lora = dataclasses.replace(base.train.lora, targets=["head.net.t_embed.mlp.1"])  # a SiLU
    refused(dataclasses.replace(base, train=dataclasses.replace(base.train, lora=lora)), sawyer_demos,
            r"matches only \['SiLU'\] modules")
    refused(dataclasses.replace(base, train=dataclasses.replace(base.train, freeze=["head.nett"])), sawyer_demos,
            r"train.freeze: 'head.nett' names no module of the policy; its modules are \['backbone', .*'head'")
    model, data = wide_config(tiny_run_config, wide_dataset, embodiment="")
    refused(dataclasses.replace(base, model=model, data=data), match=r"dataset lab/wide at .* names no embodiment")
    refused(dataclasses.replace(base, data=dataclasses.replace(base.data, embodiment_config="no_such_robot")),
            match="no_such_robot")
    model, data = wide_config(tiny_run_config, wide_dataset, embodiment="metaworld_sawyer")
    refused(dataclasses.replace(base, model=model, data=data),
            match=r"embodiment 'metaworld_sawyer', which .* knows otherwise \(action dims: 4 in the checkpoint, 6")
    model, data = wide_config(tiny_run_config, wide_dataset)
    narrow = dataclasses.replace(model, max_action_dim=4)
    refused(dataclasses.replace(base, model=narrow, data=data), match=r"'wide_arm': \(6, 9\).*max_action_dim=4")
    refused(dataclasses.replace(base, model=dataclasses.replace(base.model, normalization="zscore")), sawyer_demos,
            match="normalises with 'quantile'")
    refused(finetune(tiny_run_config, tmp_path, tmp_path), sawyer_demos, match="is not a policy checkpoint folder")
    refused(dataclasses.replace(base, model=model, data=data, train=dataclasses.replace(base.train, freeze=["head"])),
            match=r"would keep \['head.net.action_in.weight'.* at their random initialisation")

    ar, ar_model = ar_checkpoint
    renamed = dataclasses.replace(tiny_run_config.data, embodiment="sawyer_b")
    refused(finetune(tiny_run_config, ar, tmp_path, model=ar_model, data=renamed),
            match=r"fit on 'metaworld_sawyer'; the fine-tuning dataset is 'sawyer_b'")
    refused(finetune(tiny_run_config, ar, tmp_path), sawyer_demos, match=r"has a ar head, this run a dit head")
    other_bins = dataclasses.replace(ar_model, head=dataclasses.replace(ar_model.head, tokenizer=dataclasses.replace(
        ar_model.head.tokenizer, n_bins=32)))
    refused(finetune(tiny_run_config, ar, tmp_path, model=other_bins), sawyer_demos,
            match=r"the backbone of .* does not fit this config: \['backbone.lm_head.weight'")


def test_10shot_recipe_fine_tunes_from_the_command_line(tiny_run_config, tiny_checkpoint, tmp_path, capsys):
    """The documented command: the recipe, the checkpoint's own model config by draccus' include, the new data."""
    from vla.config import parse
    from vla.training.train import TrainRunConfig, main

    args = ["--config_path", "configs/finetune/10shot.yaml", "--model", f"include {tiny_checkpoint / 'config.yaml'}",
            "--train.init_from", str(tiny_checkpoint), "--data.root", tiny_run_config.data.root,
            "--data.repo_id", tiny_run_config.data.repo_id, "--data.embodiment", "sawyer_b",
            "--train.output_dir", str(tmp_path)]
    cfg = parse(TrainRunConfig, args)
    assert (cfg.train.optim.lr, cfg.train.steps, cfg.data.image_shift) == (1e-4, 1000, 4)
    assert cfg.model == dataclasses.replace(load_policy(tiny_checkpoint).config,
                                            backbone=dataclasses.replace(cfg.model.backbone))
    main([*args, "--train.steps", "2", "--train.batch_size", "4"])
    assert "init_from" in capsys.readouterr().out
    report = json.loads((tmp_path / INIT_REPORT).read_text())
    assert report["new"] == [] and report["reinitialised"] == {} and report["embodiments"]["statistics"] == "added"
    assert load_policy(tmp_path / "checkpoints" / "last").embodiments == ["metaworld_sawyer", "sawyer_b"]


class EntryDemos:
    """What extend_normalizer reads of a ChunkedDemos: a dataset read through a registry entry (bridge.yaml, whose
    0 / 1 gripper is `normalization: none`)."""

    def __init__(self):
        self.entry = load_embodiment("bridge")
        self.embodiment = "bridge"
        gen = torch.Generator().manual_seed(0)
        self.actions, self.state = torch.randn(40, 4, 7, generator=gen), torch.randn(40, 7, generator=gen)
        self.actions[..., 6] = (torch.arange(40) % 2)[:, None].float()
        self.info = EmbodimentInfo(self.entry.action_names, self.entry.state_names, "ee_delta", self.entry.fps)

    def numeric(self) -> dict:
        return {"state": self.state.numpy(), "action": self.actions[:, 0].numpy()}


def test_extend_normalizer_carries_the_modes_of_the_checkpoint_and_of_the_new_embodiment(tmp_path):
    stats = {"old_arm": {"action": compute_stats(torch.rand(20, 3)), "state": compute_stats(torch.rand(20, 2))}}
    old_modes = {"old_arm": {"action": ["quantile", "quantile", "none"], "state": ["quantile", "quantile"]}}
    pretrained = Normalizer(stats=stats, mode="quantile", max_action_dim=3, max_state_dim=2, modes=old_modes)
    demos = EntryDemos()
    model = ModelConfig(max_action_dim=8, max_state_dim=8)
    extended, status = extend_normalizer(pretrained, demos, model, tmp_path)
    assert status == "added" and extended.stats["old_arm"] == stats["old_arm"]
    assert extended.modes == old_modes | {"bridge": {"action": ["quantile"] * 6 + ["none"],
                                                     "state": ["quantile"] * 7}}
    actions = demos.actions[:, 0]
    assert torch.equal(extended.normalize_action(actions, "bridge")[:, 6], actions[:, 6])
    known, status = extend_normalizer(extended, demos, model, tmp_path)  # a known embodiment keeps its modes
    assert status == "the checkpoint's" and known.modes == extended.modes
