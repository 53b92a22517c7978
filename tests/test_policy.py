"""Policy, checkpoints, training and evaluation on the tiny simulator dataset."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from vla.checkpoint import load_policy
from vla.data.transforms import normalize_batch
from vla.policy import VLAPolicy
from vla.training.logging import read_metrics
from vla.training.train import TrainRunConfig, load_demos, train
from vla.types import Observation


def with_train(cfg: TrainRunConfig, **changes) -> TrainRunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


@pytest.fixture(scope="module")
def demos(tiny_run_config):
    return load_demos(tiny_run_config.model, tiny_run_config.data)


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    return tiny_checkpoint


def observation(demos, indices=(0, 5)) -> Observation:
    idx = torch.tensor(indices)
    return Observation(images=demos.images[idx], state=demos.state[idx], instruction=demos.instructions(idx),
                       embodiment=[demos.embodiment] * len(indices))


def test_checkpoint_round_trip_gives_identical_actions(trained, demos, tmp_path):
    policy = load_policy(trained)
    obs = observation(demos)
    before = policy.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3)
    policy.save_pretrained(tmp_path / "copy")
    after = VLAPolicy.from_pretrained(tmp_path / "copy").predict(obs, generator=torch.Generator().manual_seed(0),
                                                                 num_steps=3)
    assert before.actions.shape == (2, 4, 4)
    assert before.mask.all()
    assert torch.equal(before.actions, after.actions)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "README.md", "backbone", "config.yaml", "meta.json", "model.safetensors", "norm_stats.json"]
    assert not list((tmp_path / "copy").rglob("*.bin")) and not list((tmp_path / "copy").rglob("*.pt"))


def test_actions_come_back_in_robot_units(trained, demos):
    policy = load_policy(trained)
    actions = policy.predict(observation(demos, tuple(range(8))), num_steps=3).actions
    stats = policy.normalizer.stats[demos.embodiment]["action"]
    low, high = torch.tensor(stats["q01"]), torch.tensor(stats["q99"])
    assert ((actions >= low - 1e-4) & (actions <= high + 1e-4)).all()


def test_checkpoint_errors_name_the_problem(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken, symlinks=False)
    (broken / "norm_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="norm_stats.json"):
        load_policy(broken)
    with pytest.raises(ValueError, match="made for head 'dit', not 'flow'"):
        load_policy(trained, expected_head="flow")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nowhere")


def test_unknown_embodiment_is_an_error_not_a_default(trained, demos):
    policy = load_policy(trained)
    obs = observation(demos)
    obs.embodiment = ["ur5e", "ur5e"]
    with pytest.raises(ValueError, match="ur5e"):
        policy.predict(obs, num_steps=2)


def test_bad_observations_are_rejected(trained, demos):
    policy = load_policy(trained)
    obs = observation(demos)
    with pytest.raises(ValueError, match="uint8"):
        policy.predict(Observation(obs.images.float(), obs.state, obs.instruction, obs.embodiment))
    with pytest.raises(ValueError, match="images must be"):
        policy.predict(Observation(obs.images[:, :, :16], obs.state, obs.instruction, obs.embodiment))
    state = obs.state.clone()
    state[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Observation(obs.images, state, obs.instruction, obs.embodiment)


@pytest.mark.parametrize("extra", [1, -1])
def test_state_of_the_wrong_width_is_refused(trained, demos, extra):
    """A state one dim wider or narrower than the embodiment's is an error naming the expected width, in predict
    and in training (both normalise the state), never silently sliced."""
    policy = load_policy(trained)
    obs = observation(demos)
    width = obs.state.shape[1]
    state = torch.cat([obs.state, torch.ones(2, 1)], dim=1) if extra > 0 else obs.state[:, :-1]
    bad = Observation(obs.images, state, obs.instruction, obs.embodiment)
    message = f"state has {width + extra} dims; expected {width} for embodiment '{demos.embodiment}'"
    with pytest.raises(ValueError, match=message):
        policy.predict(bad, num_steps=2)
    batch = demos.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        policy(normalize_batch(policy.normalizer, {**batch, "state": state}))


def test_mixed_embodiment_state_is_padded_to_the_widest():
    from vla.data.normalize import Normalizer, compute_stats

    stats = {name: {"action": compute_stats(torch.randn(20, 2)), "state": compute_stats(torch.randn(20, dim))}
             for name, dim in (("wide", 3), ("narrow", 2))}
    norm = Normalizer(stats, "zscore", max_action_dim=2, max_state_dim=4)
    state = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.0]])
    assert norm.normalize_state(state, ["wide", "narrow"]).shape == (2, 4)
    with pytest.raises(ValueError, match="'narrow' has values beyond its 2 dims"):
        norm.normalize_state(state.flip(0), ["wide", "narrow"])
    with pytest.raises(ValueError, match=r"expected 3 for embodiment 'narrow' \(2\) / 'wide' \(3\)"):
        norm.normalize_state(torch.zeros(2, 4), ["wide", "narrow"])


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
@pytest.mark.parametrize("head_name", ["dit", "flow"])
def test_zscore_policy_acts_beyond_one_std_and_quantile_clips(tiny_run_config, demos, mode, head_name):
    """A head whose denoiser leads to normalised actions at 2.5 gives mean + 2.5 std in robot units under zscore
    (samples clip at model.zscore_clip std), and q99 under quantile (samples clip to [-1, 1])."""
    from vla.action_heads import DiTHeadConfig, FlowHeadConfig
    from vla.action_heads.diffusion import DiffusionConfig
    from vla.data.normalize import Normalizer

    small = dict(horizon=4, hidden=32, depth=1, heads=2)
    head = (DiTHeadConfig(diffusion=DiffusionConfig(prediction_type="sample"), **small) if head_name == "dit"
            else FlowHeadConfig(**small))
    model = dataclasses.replace(tiny_run_config.model, head=head, normalization=mode)
    normalizer = Normalizer.from_demos(demos, mode, model.max_action_dim, model.max_state_dim)
    policy = VLAPolicy(model, normalizer).eval()
    target = 2.5
    if head_name == "dit":  # predicts the clean actions
        policy.head.net.forward = lambda noisy, t, tokens, cache=None: torch.full_like(noisy, target)
    else:  # the velocity of the straight path to the target
        policy.head.net.forward = lambda x, t, *args: (x - target) / t[:, None, None]
    actions = policy.predict(observation(demos), generator=torch.Generator().manual_seed(0), num_steps=4).actions
    reached = target if mode == "zscore" else 1.0
    expected = normalizer.unnormalize_action(torch.full((model.max_action_dim,), reached), demos.embodiment)
    torch.testing.assert_close(actions, expected.expand_as(actions), atol=1e-3, rtol=1e-4)
    if mode == "zscore":
        one_std = normalizer.unnormalize_action(torch.ones(model.max_action_dim), demos.embodiment)
        assert (actions > one_std + 1e-3).any()


def test_zscore_clip_is_configurable():
    from vla.config import ModelConfig
    from vla.policy import sample_clip

    assert sample_clip("quantile", ModelConfig(zscore_clip=3.0)) == 1.0
    assert sample_clip("zscore", ModelConfig(zscore_clip=3.0)) == 3.0
    assert sample_clip("zscore", ModelConfig(zscore_clip=0.0)) is None  # no clip
    with pytest.raises(ValueError, match="zscore_clip must be >= 0"):
        ModelConfig(zscore_clip=-1.0)


@pytest.fixture(scope="module")
def checkpoint_with_bac(trained, tmp_path_factory):
    """The tiny checkpoint plus a BAC schedule for its default step count that caches hard (every block computed
    at the first step only), so that sampling with it visibly differs from sampling without it. The blocks'
    adaLN-Zero modulations, still near zero after 10 steps, are randomised so that the blocks matter."""
    from vla.action_heads.bac import BACSchedule

    policy = load_policy(trained)
    with torch.no_grad():
        for block in policy.head.net.blocks:
            block.ada[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    steps, blocks = policy.head.config.diffusion.num_inference_steps, policy.head.num_cached_blocks()
    policy.head.add_bac_schedule(BACSchedule(steps, 0.5, [[0]] * blocks, [[0.0] * steps] * blocks))
    path = tmp_path_factory.mktemp("bac") / "ckpt"
    policy.save_pretrained(path)
    return path


def test_predict_local_policy_and_eval_sample_alike_by_default(checkpoint_with_bac):
    """Same checkpoint (with a BAC schedule), same seed, default settings: policy.predict, LocalPolicy (vla-deploy,
    vla-serve) and the vla-eval rollout give identical actions; BAC only when asked."""
    import numpy as np

    from vla.config import EvalConfig
    from vla.deploy.protocol import ObservationMessage
    from vla.deploy.runner import LocalPolicy
    from vla.eval.rollout import run_episode
    from vla.sim.metaworld_env import MetaWorldEnv

    policy = load_policy(checkpoint_with_bac)
    calls = []

    class Recording:  # what the rollout asks the policy for, and what it gets
        config = policy.config

        def predict(self, obs, **options):
            calls.append((obs, policy.predict(obs, **options)))
            return calls[-1][1]

    seed = 100_000
    env = MetaWorldEnv("reach", seed=seed, image_size=policy.config.image_size, camera=policy.config.cameras[0],
                       max_steps=1)
    try:
        run_episode(Recording(), env, seed, EvalConfig(tasks=["reach"]), [], record=False)
    finally:
        env.close()
    obs, evaluated = calls[0]
    default = policy.predict(obs, generator=torch.Generator().manual_seed(seed)).actions
    cached = policy.predict(obs, generator=torch.Generator().manual_seed(seed), bac=True).actions
    assert (cached - default).abs().max() > 1e-4  # the schedule does change the actions
    assert torch.equal(evaluated.actions, default)
    message = ObservationMessage(obs.images[0].numpy(), obs.state[0].numpy(), obs.instruction[0], obs.embodiment[0])
    local = LocalPolicy.from_checkpoint(str(checkpoint_with_bac), seed=seed).infer(message)
    assert np.array_equal(local, default[0].numpy())
    local_cached = LocalPolicy.from_checkpoint(str(checkpoint_with_bac), seed=seed, bac=True).infer(message)
    assert np.array_equal(local_cached, cached[0].numpy())  # --bac true: the same cached actions everywhere


def test_eval_summary_records_the_sampling_settings(checkpoint_with_bac, tmp_path):
    from vla.eval.cli import main

    main([f"--checkpoint={checkpoint_with_bac}", "--tasks=[reach]", "--episodes_per_task=1", "--max_steps=2",
          "--bac=true", "--seed_start=7", f"--output_dir={tmp_path}"])
    settings = json.loads((tmp_path / "summary.json").read_text())["settings"]
    steps = load_policy(checkpoint_with_bac).config.head.diffusion.num_inference_steps
    assert {k: settings[k] for k in ("num_inference_steps", "bac", "bac_threshold", "seed_start", "n_obs_steps")} \
        == {"num_inference_steps": steps, "bac": True, "bac_threshold": 0.5, "seed_start": 7, "n_obs_steps": 1}
    with pytest.raises(ValueError, match="no BAC schedule is calibrated for 3 steps"):
        main([f"--checkpoint={checkpoint_with_bac}", "--num_inference_steps=3", "--bac=true",
              f"--output_dir={tmp_path}"])


def test_training_writes_logs_and_resumes(trained, tiny_run_config, tmp_path):
    assert trained.name == "step_0000010"
    out = tmp_path / "run"
    shutil.copytree(trained.parent.parent, out, symlinks=True)  # leave the shared checkpoint as it is
    assert (out / "loss_curve.png").stat().st_size > 0
    assert list((out / "tb").iterdir())
    assert read_metrics(out / "metrics.csv")["step"] == [5.0, 10.0]
    with pytest.raises(ValueError, match="finished run .*train.steps: 10 in the checkpoint, 15 now"):
        train(with_train(tiny_run_config, output_dir=str(out), steps=15, resume=True))
    resumed = train(with_train(tiny_run_config, output_dir=str(out), steps=15, resume=True, resume_with_changes=True))
    assert resumed.name == "step_0000015"
    assert read_metrics(out / "metrics.csv")["step"] == [5.0, 10.0, 15.0]
    state = json.loads((resumed / "training_state" / "state.json").read_text())
    assert state["step"] == 15
    assert state["history"] == [{"step": 10, "event": "resumed with changes",
                                 "changes": ["train.steps: 10 in the checkpoint, 15 now"]}]
    with pytest.raises(FileExistsError, match="resume"):
        train(with_train(tiny_run_config, output_dir=str(out), steps=20))


def test_dataset_with_other_action_dim_is_rejected(tiny_run_config):
    data = dataclasses.replace(tiny_run_config.data, action_dim=7)
    with pytest.raises(ValueError, match="action dim"):
        load_demos(tiny_run_config.model, data)


def test_policy_loss_falls_on_fixed_batch(tiny_run_config, demos, train_on_batch):
    from vla.data.normalize import Normalizer

    torch.manual_seed(0)
    model = tiny_run_config.model
    policy = VLAPolicy(model, Normalizer.from_demos(demos, model.normalization, model.max_action_dim,
                                                    model.max_state_dim))
    losses = train_on_batch(policy, demos.sample(16, torch.Generator().manual_seed(0)), steps=60)
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_vla_eval_cli_with_adaptive_ensemble(trained, tmp_path, capsys):
    from vla.eval.cli import main

    main([f"--checkpoint={trained}", "--tasks=[reach]", "--episodes_per_task=1", "--max_steps=6",
          "--schedule.mode=adaptive", "--num_inference_steps=2", f"--output_dir={tmp_path}"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["schedule"]["mode"] == "adaptive"
    assert summary["settings"]["num_inference_steps"] == 2 and summary["settings"]["bac"] is False
    assert summary["settings"]["bac_threshold"] is None
    assert summary["tasks"]["reach"]["mean_episode_length"] == 6  # untrained: runs to max_steps
    assert "reach" in capsys.readouterr().out


def test_tied_weights_are_recognised():
    from vla.checkpoint import tied_parameter_names

    module = torch.nn.Module()
    module.embed, module.head, module.other = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    module.head.weight = module.embed.weight
    assert tied_parameter_names(module) == {"embed.weight", "head.weight"}


def test_dataset_frames_are_resized_to_the_model_image_size(tiny_run_config):
    """A dataset recorded at 32 px trains a 48 px model: its frames are resized as they are read (bicubic), and
    cameras that differ from model.cameras are still refused."""
    native = load_demos(tiny_run_config.model, tiny_run_config.data)
    model = dataclasses.replace(tiny_run_config.model, image_size=48)
    resized = load_demos(model, tiny_run_config.data)
    assert tuple(native.images.shape[2:4]) == (32, 32) and tuple(resized.images.shape[2:4]) == (48, 48)
    import PIL.Image

    frame = PIL.Image.fromarray(native.images[5, 0].numpy())
    expected = np.asarray(frame.resize((48, 48), PIL.Image.Resampling.BICUBIC))
    assert np.abs(resized.images[5, 0].numpy().astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="has cameras \\['corner'\\]; the model config expects \\['wrist'\\]"):
        load_demos(dataclasses.replace(tiny_run_config.model, cameras=["wrist"]), tiny_run_config.data)


def test_two_process_training_on_cpu(tiny_run_config, tmp_path):
    """The same loop under torchrun: 2 ranks over gloo, one checkpoint written by rank 0."""
    import os
    import socket
    import subprocess
    import sys

    from vla.config import to_yaml

    out = tmp_path / "ddp"
    cfg = with_train(tiny_run_config, output_dir=str(out), steps=4, log_every=2, save_every=4)
    (tmp_path / "run.yaml").write_text(to_yaml(cfg))
    with socket.socket() as probe:  # a free port, not torchrun's default 29500, which another job may hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m",
               "vla.training.train", f"--config_path={tmp_path / 'run.yaml'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out / "metrics.csv")
    assert metrics["step"] == [2.0, 4.0]
    # the LR schedule advances once per optimiser step, however many ranks there are
    from vla.training.train import make_lr_schedule

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.optim.lr)
    schedule = make_lr_schedule(optimizer, cfg.train, 0)
    expected = []
    for _ in range(4):
        optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr()[0])
    assert metrics["lr"] == pytest.approx([expected[1], expected[3]])
    assert load_policy(out / "checkpoints" / "last").predict(observation_from_demos(cfg)).actions.shape[1] == 4


def observation_from_demos(cfg: TrainRunConfig) -> Observation:
    return observation(load_demos(cfg.model, cfg.data))


def test_eval_latency_leaves_out_the_warm_up_call():
    """The first model call of a rollout (lazy initialisation) is reported apart, not as the p99 of a policy that
    calls its model a few times per episode."""
    from vla.config import EvalConfig
    from vla.eval.rollout import Episode, summarize

    episodes = [Episode("reach", 100000, True, 10, [])]
    summary = summarize(episodes, [2.0] + [0.010] * 20, EvalConfig(tasks=["reach"], episodes_per_task=1), {})
    assert summary["chunk_latency_ms"] == {"p50": pytest.approx(10.0), "p99": pytest.approx(10.0)}
    assert summary["first_call_ms"] == pytest.approx(2000.0)
