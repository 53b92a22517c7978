"""The comparison with LeRobot's policies (vla.eval.vs_lerobot): the adapter that drives LeRobot policies through our
rollout, LeRobot's training in a subprocess, and the comparison command end to end on a smoke config."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vla import provenance
from vla.config import EvalConfig, TrainConfig
from vla.deploy.chunking import ScheduleConfig
from vla.eval import lerobot_train
from vla.eval.heads_benchmark import HeadSizeConfig
from vla.eval.lerobot_policy import LeRobotPolicy, evaluate
from vla.eval.lerobot_train import LeRobotPolicySpec, LeRobotRun, Measured, cli_value, train_args, train_lerobot
from vla.pipeline import TinyBackboneConfig
from vla.sim.demos import DemoConfig

IMAGE = 32
CAMERA = "corner"
ACTION_LOW, ACTION_HIGH = 0.2, 0.3  # the action statistics the tests give LeRobot's processors
CLEAN = {"commit": "c0ffee" * 6 + "abcd", "dirty": False}  # runs are reused only at a clean, unchanged checkout


# ---- the adapter -----------------------------------------------------------------------------------


def lerobot_stats() -> dict:
    """Dataset statistics whose action range is [ACTION_LOW, ACTION_HIGH] (mean / std: its centre, tiny spread)."""
    image = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
             "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    state = {"mean": torch.zeros(7), "std": torch.ones(7), "min": -torch.ones(7), "max": torch.ones(7)}
    centre = (ACTION_LOW + ACTION_HIGH) / 2
    action = {"mean": torch.full((4,), centre), "std": torch.full((4,), 1e-3),
              "min": torch.full((4,), ACTION_LOW), "max": torch.full((4,), ACTION_HIGH)}
    return {f"observation.images.{CAMERA}": image, "observation.state": state, "action": action}


def saved_lerobot_policy(policy_type: str, options: dict, folder: Path) -> Path:
    """An untrained LeRobot policy with its processors, saved as lerobot_train saves a checkpoint."""
    import lerobot.policies  # noqa: F401
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    features = {"input_features": {f"observation.images.{CAMERA}": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
                                   "observation.state": PolicyFeature(FeatureType.STATE, (7,))},
                "output_features": {"action": PolicyFeature(FeatureType.ACTION, (4,))}}
    spec = LeRobotPolicySpec(type=policy_type, options=options)
    config = PreTrainedConfig.get_choice_class(policy_type)(device="cpu", **features, **spec.policy_options())
    torch.manual_seed(0)
    policy = get_policy_class(policy_type)(config)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=lerobot_stats())
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(folder)
    return folder


def tiny_smolvlm(folder: Path, tasks: tuple[str, ...] = ("reach",)) -> str:
    from vla.backbones.tiny import build_tiny_vlm
    from vla.sim.tasks import get_task

    return str(build_tiny_vlm("smolvlm", folder, [get_task(t).instruction for t in tasks], image_size=IMAGE,
                              patch_size=8, hidden_size=32, heads=2))


def action_queue(adapter: LeRobotPolicy):
    """LeRobot's own action queue (ACT keeps it apart; Diffusion Policy and SmolVLA in _queues)."""
    policy = adapter.policy
    return policy._action_queue if hasattr(policy, "_action_queue") else policy._queues["action"]


@pytest.mark.slow
@pytest.mark.parametrize("policy_type, options, n_action_steps", [
    ("act", {"dim_model": 32, "dim_feedforward": 64, "n_heads": 2, "n_encoder_layers": 1, "n_vae_encoder_layers": 1,
             "chunk_size": 8, "n_action_steps": 4}, 4),
    ("diffusion", {"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "crop_shape": None,
                   "spatial_softmax_num_keypoints": 4, "num_inference_steps": 2, "horizon": 8, "n_action_steps": 5}, 5),
    ("smolvla", {"chunk_size": 8, "n_action_steps": 3, "num_steps": 2, "resize_imgs_with_padding": [IMAGE, IMAGE]}, 3),
])
def test_adapter_drives_lerobot_policy_through_our_rollout(policy_type, options, n_action_steps, tmp_path):
    """One episode of our rollout through select_action: one action of the dataset's width per step, un-normalised
    by LeRobot's own post-processor with the dataset's statistics, the model run exactly when LeRobot's queue is
    empty, and one latency per model call."""
    from vla.eval.rollout import run_tasks

    if policy_type == "smolvla":  # built offline on a tiny random SmolVLM (SmolVLM2-500M cannot be fetched here)
        options = options | {"vlm_model_name": tiny_smolvlm(tmp_path / "smolvlm")}
    adapter = LeRobotPolicy.load(saved_lerobot_policy(policy_type, options, tmp_path / "policy"))
    assert (adapter.config.cameras, adapter.config.image_size, adapter.config.n_action_steps) == (
        [CAMERA], IMAGE, n_action_steps)
    actions, model_calls = [], []
    predict = adapter.predict

    def recording(obs, **kwargs):
        model_calls.append(len(action_queue(adapter)) == 0)
        assert adapter.runs_model(adapter._calls) == model_calls[-1]
        chunk = predict(obs, **kwargs)
        actions.append(chunk.actions)
        return chunk

    adapter.predict = recording
    steps = 12
    cfg = EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=steps, videos_per_task=0,
                     schedule=ScheduleConfig(execute_steps=1))
    episodes, _ = run_tasks(adapter, cfg, IMAGE, CAMERA)
    assert episodes[0].length == steps == len(actions)
    assert all(a.shape == (1, 1, 4) for a in actions)
    stacked = torch.cat(actions)
    assert stacked.min() >= ACTION_LOW - 1e-2 and stacked.max() <= ACTION_HIGH + 1e-2  # LeRobot's un-normalisation
    assert sum(model_calls) == len(adapter.chunk_latencies) == math.ceil(steps / n_action_steps)


def test_lerobot_evaluation_refuses_our_chunk_settings():
    cfg = EvalConfig(tasks=["reach"], schedule=ScheduleConfig(execute_steps=4))
    with pytest.raises(ValueError, match="execute_steps 1"):
        evaluate(None, cfg)


# ---- LeRobot's training ----------------------------------------------------------------------------


def test_lerobot_command_line_turns_pretrained_weights_off():
    run = LeRobotRun(spec=LeRobotPolicySpec(type="act", options={"dim_model": 64, "chunk_size": 8}),
                     dataset_root="/data/ds", repo_id="local/metaworld", steps=10, batch_size=4, seed=3,
                     output_dir="/out/act_s3/lerobot")
    args = train_args(run)
    assert "--policy.type=act" in args and "--policy.pretrained_backbone_weights=null" in args
    assert {"--steps=10", "--batch_size=4", "--seed=3", "--policy.dim_model=64", "--wandb.enable=false",
            "--policy.push_to_hub=false", "--dataset.root=/data/ds",
            "--dataset.image_transforms.enable=true"} <= set(args)  # LeRobot's augmentation, as ours augments
    assert cli_value([40, 80]) == "[40,80]" and cli_value(None) == "null" and cli_value(False) == "false"


def test_lerobot_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown LeRobot policy type 'actt'; LeRobot has act, diffusion"):
        LeRobotPolicySpec(type="actt").validate()
    with pytest.raises(ValueError, match=r"\['dim_modle'\] are not options of LeRobot's ACTConfig"):
        LeRobotPolicySpec(type="act", options={"dim_modle": 64}).validate()
    with pytest.raises(ValueError, match="would load pretrained weights"):
        LeRobotPolicySpec(type="act", options={"pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}
                          ).validate()


def test_interrupted_lerobot_run_resumes_and_failures_show_the_log(tmp_path, monkeypatch):
    """An interrupted run resumes from LeRobot's last checkpoint (its own --resume), a finished one is returned
    without running anything, and a failed one raises with the end of its log."""
    out = tmp_path / "act_s0" / "lerobot"
    step_dir = out / "checkpoints" / "000004"
    (step_dir / "pretrained_model").mkdir(parents=True)
    (step_dir / "training_state").mkdir()
    (step_dir / "training_state" / "training_step.json").write_text(json.dumps({"step": 4}))
    (out / "checkpoints" / "last").symlink_to("000004")
    calls = []

    def fake_run(cmd, log_path, env=None):
        calls.append(cmd)
        with open(log_path, "a") as log:
            log.write("step:6 smpl:24 updt_s:0.500 data_s:0.100\nstep:8 smpl:32 updt_s:0.300 data_s:0.100\n")
        return Measured(returncode=0, peak_rss_mb=512.0, wall_s=3.0)

    monkeypatch.setattr(lerobot_train, "run_measured", fake_run)
    run = LeRobotRun(spec=LeRobotPolicySpec(type="act"), dataset_root=str(tmp_path), repo_id="x/y", steps=8,
                     batch_size=4, seed=0, output_dir=str(out))
    summary = train_lerobot(run)
    assert "--resume=true" in calls[0] and f"--config_path={out}/checkpoints/last/pretrained_model/train_config.json" \
        in calls[0] and "--steps=8" in calls[0]
    assert summary["resumed_at_step"] == 4 and summary["s_per_step"] == pytest.approx(0.4)  # after the 1st window
    assert summary["samples_per_s"] == pytest.approx(10.0) and summary["peak_rss_mb"] == 512.0
    assert summary["samples_per_s_update"] == pytest.approx(4 / 0.3)  # without data loading
    assert summary["segments"] == 1 and summary["wall_s"] == 3.0
    assert train_lerobot(run) == summary and len(calls) == 1  # finished: reused

    (out.parent / "train.json").unlink()
    def failing_run(cmd, log_path, env=None):
        with open(log_path, "a") as log:
            log.write("Traceback ...\nValueError: bad option\n")
        return Measured(returncode=1, peak_rss_mb=0.0, wall_s=0.0)

    monkeypatch.setattr(lerobot_train, "run_measured", failing_run)
    with pytest.raises(RuntimeError, match="(?s)failed \\(exit 1\\).*ValueError: bad option"):
        train_lerobot(run)


def test_lerobot_run_stopped_after_its_last_checkpoint_is_not_retrained(tmp_path, monkeypatch):
    """Killed after LeRobot saved its final checkpoint but before train.json: the rerun trains nothing (LeRobot
    would log no step at all) and takes the step times from the log of the calls before."""
    out = tmp_path / "act_s0" / "lerobot"
    (out / "checkpoints" / "000008" / "training_state").mkdir(parents=True)
    (out / "checkpoints" / "000008" / "pretrained_model").mkdir()
    (out / "checkpoints" / "000008" / "training_state" / "training_step.json").write_text(json.dumps({"step": 8}))
    (out / "checkpoints" / "last").symlink_to("000008")
    (out.parent / "train.log").write_text("step:4 smpl:16 updt_s:0.900 data_s:0.100\n"
                                          "step:8 smpl:32 updt_s:0.200 data_s:0.050\n")

    def must_not_run(cmd, log_path, env=None):
        raise AssertionError(f"LeRobot was started again: {cmd}")

    monkeypatch.setattr(lerobot_train, "run_measured", must_not_run)
    run = LeRobotRun(spec=LeRobotPolicySpec(type="act"), dataset_root=str(tmp_path), repo_id="x/y", steps=8,
                     batch_size=4, seed=0, output_dir=str(out))
    summary = train_lerobot(run)
    assert summary["s_per_step"] == pytest.approx(0.25) and summary["resumed_at_step"] == 8
    assert summary["segments"] == 0 and summary["peak_rss_mb"] is None  # no finished call measured memory


def test_training_subprocess_dies_with_its_parent(tmp_path):
    """A killed benchmark leaves no LeRobot training running into the folder the next call resumes."""
    child_script = tmp_path / "child.py"
    child_script.write_text(f"import os, time\nopen({str(tmp_path / 'child.pid')!r}, 'w').write(str(os.getpid()))\n"
                            "time.sleep(60)\n")
    parent_script = tmp_path / "parent.py"
    log = tmp_path / "log"
    parent_script.write_text("import sys\nfrom pathlib import Path\nfrom vla.eval.lerobot_train import run_measured\n"
                             f"run_measured([sys.executable, {str(child_script)!r}], Path({str(log)!r}))\n")
    parent = subprocess.Popen([sys.executable, str(parent_script)])
    pid_file = tmp_path / "child.pid"
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()  # SIGKILL: no Python handler of the parent runs
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the training subprocess outlived its killed parent")


@pytest.mark.slow
@pytest.mark.parametrize("policy_type, options", [
    ("diffusion", {"down_dims": [16, 32, 64], "diffusion_step_embed_dim": 16, "crop_shape": None,
                   "spatial_softmax_num_keypoints": 8, "num_inference_steps": 2}),
    ("smolvla", {"chunk_size": 8, "n_action_steps": 4, "num_steps": 2, "freeze_vision_encoder": False,
                 "train_expert_only": False, "resize_imgs_with_padding": [IMAGE, IMAGE]}),
])
def test_lerobot_runner_trains_diffusion_policy_and_smolvla_a_few_steps(policy_type, options, tiny_demo_config,
                                                                       tiny_demos_path, tmp_path):
    """LeRobot's own training script, through our runner, on the tiny demos: 2 steps of batch 2 (ACT trains in the
    comparison's smoke run below), a finite loss logged at each step, and the checkpoint rolled out by our rollout
    through the adapter."""
    from vla.eval.rollout import run_tasks

    if policy_type == "smolvla":
        options = options | {"vlm_model_name": tiny_smolvlm(tmp_path / "smolvlm", tuple(tiny_demo_config.tasks))}
    run = LeRobotRun(spec=LeRobotPolicySpec(type=policy_type, options=options), dataset_root=str(tiny_demos_path),
                     repo_id=tiny_demo_config.repo_id, steps=2, batch_size=2, seed=0,
                     output_dir=str(tmp_path / "run" / "lerobot"), log_freq=1, save_freq=2)
    trained = train_lerobot(run)
    assert (trained["policy"], trained["steps"], trained["log_windows"]) == (policy_type, 2, 2)
    assert trained["samples_per_s"] > 0 and trained["peak_rss_mb"] > 100
    losses = [float(x) for x in re.findall(r" loss:([-0-9.e]+)", (tmp_path / "run" / "train.log").read_text())]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    adapter = LeRobotPolicy.load(Path(trained["checkpoint"]))
    assert adapter.config.type == policy_type and adapter.parameter_counts()["vision"] > 0
    cfg = EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=6, videos_per_task=0,
                     schedule=ScheduleConfig(execute_steps=1))
    episodes, latencies = run_tasks(adapter, cfg, IMAGE, CAMERA)
    assert episodes[0].length == 6 and len(latencies) == 6


# ---- the comparison, end to end --------------------------------------------------------------------


def smoke_config(root: Path, demos: DemoConfig):
    from vla.eval.vs_lerobot import VsLeRobotConfig

    act = LeRobotPolicySpec(type="act", options={"dim_model": 32, "dim_feedforward": 64, "n_heads": 2,
                                                 "n_encoder_layers": 1, "n_vae_encoder_layers": 1, "chunk_size": 8,
                                                 "n_action_steps": 4})
    return VsLeRobotConfig(
        heads=["dit"], lerobot={"act": act}, seeds=[0],
        demos=demos,
        tiny_backbone=TinyBackboneConfig(root=str(root / "tiny_vlm"), hidden_size=32, heads=2),
        head=HeadSizeConfig(horizon=8, hidden=32, depth=2, heads=2), image_shift=2,
        train=TrainConfig(steps=4, batch_size=4, log_every=2, save_every=4),
        eval=EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=12, videos_per_task=0, num_inference_steps=2),
        output_dir=str(root / "runs"), report_dir=str(root / "report"))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_demo_config, tiny_demos_path):
    """The comparison on a smoke config (our dit and LeRobot's ACT, 4 steps each on the tiny demos, one short
    episode), at a clean checkout as far as provenance can tell."""
    from vla.eval.vs_lerobot import run_comparison

    assert tiny_demo_config.image_size == IMAGE
    cfg = smoke_config(tmp_path_factory.mktemp("vs_lerobot"), tiny_demo_config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(provenance, "git_commit", lambda: dict(CLEAN))
        report = run_comparison(cfg)
    return cfg, report


@pytest.mark.slow
def test_lerobot_training_checkpoint_is_loaded_by_the_adapter(comparison):
    cfg, _ = comparison
    run = Path(cfg.output_dir) / "act_s0"
    trained = json.loads((run / "train.json").read_text())
    assert (trained["steps"], trained["batch_size"], trained["log_windows"]) == (4, 4, 2)
    assert trained["samples_per_s"] > 0 and trained["peak_rss_mb"] > 100
    checkpoint = Path(trained["checkpoint"])
    assert sorted(p.name for p in checkpoint.parents[1].iterdir()) == ["000004", "last"]
    train_config = json.loads((checkpoint / "train_config.json").read_text())
    assert train_config["policy"]["pretrained_backbone_weights"] is None
    assert train_config["dataset"]["root"] == str(Path(cfg.demos.dataset_dir()).resolve())
    adapter = LeRobotPolicy.load(checkpoint)
    assert adapter.config.type == "act" and adapter.parameter_counts()["vision"] > 0


@pytest.mark.slow
def test_comparison_table_has_every_column_and_provenance_and_reuses_runs(comparison, monkeypatch):
    from vla.eval import lerobot_policy, vs_lerobot
    from vla.eval.vs_lerobot import run_comparison

    cfg, report = comparison
    text = report.read_text()
    for column in ("success", "reach", "params (vision)", "train samples/s", "latency p50 / p99 (ms)",
                   "peak train memory", "executes (of chunk)", "pretrained weights", "commit"):
        assert f"| {column} |" in text
    assert "| `dit` | ours (`dit` head) |" in text and "| `act` | LeRobot `act` |" in text
    assert "ResNet-18 from scratch (LeRobot's default ImageNet weights turned off; its frozen batch norm" in text
    assert (Path(cfg.report_dir) / "vs_lerobot.png").stat().st_size > 10_000
    results = json.loads((Path(cfg.report_dir) / "vs_lerobot.json").read_text())
    assert [(r["name"], r["seed"]) for r in results["rows"]] == [("dit", 0), ("act", 0)]
    for row in results["rows"]:
        assert row["provenance"]["commit"] == CLEAN["commit"] and row["provenance"]["config"]
        assert row["tasks"]["reach"]["episodes"] == 1 and row["peak_rss_mb"] > 100
        assert row["steps"] * row["batch_size"] == 16  # the same samples seen
    assert results["rows"][1]["execution"] == {"chunk_size": 8, "n_action_steps": 4, "num_inference_steps": None,
                                               "temporal_ensemble": False}

    def refuse(*args, **kwargs):
        raise AssertionError("a cached run was trained or evaluated again")

    monkeypatch.setattr(provenance, "git_commit", lambda: dict(CLEAN))
    for module, name in ((lerobot_train, "run_measured"), (vs_lerobot, "run_measured"), (lerobot_policy, "evaluate"),
                         (vs_lerobot, "train_ours")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr("vla.pipeline.run_pipeline", refuse)
    again = run_comparison(cfg)
    rows = json.loads((Path(cfg.report_dir) / "vs_lerobot.json").read_text())["rows"]
    assert [r["tasks"] for r in rows] == [r["tasks"] for r in results["rows"]]
    assert again.read_text().split("| policy |")[1] == text.split("| policy |")[1]

    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5))
    with pytest.raises(ValueError, match=r"cannot be reused: made with other settings \(.*steps"):
        run_comparison(changed)
