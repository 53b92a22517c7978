"""Observation history (model.n_obs_steps): past frames as extra image slots, the same in training,
evaluation and the deploy loop; at the start of an episode the first frame fills the history."""

import dataclasses

import numpy as np
import torch

from vla.training.train import load_demos


def test_dataset_history_stays_inside_the_episode(tiny_run_config):
    demos = load_demos(tiny_run_config.model, tiny_run_config.data)
    start = int(torch.nonzero(demos.episode_index == 1)[0])  # first frame of episode 1
    history = demos.history(torch.tensor([start, start + 1, start + 3]), n_obs_steps=3)
    assert history.tolist() == [[start] * 3, [start, start, start + 1], [start + 1, start + 2, start + 3]]
    images = demos.observation_images(torch.tensor([start + 1]), n_obs_steps=2)
    assert images.shape == (1, 2, *demos.images.shape[1:][1:]) and torch.equal(images[0, 0], demos.images[start, 0])


def test_policy_with_history_trains_evaluates_and_deploys(tiny_run_config, tmp_path):
    from vla.checkpoint import load_policy
    from vla.config import EvalConfig
    from vla.deploy.protocol import blank_observation, validate_observation
    from vla.deploy.runner import LocalPolicy
    from vla.eval.rollout import evaluate
    from vla.training.train import train

    model = dataclasses.replace(tiny_run_config.model, n_obs_steps=2)
    train_cfg = dataclasses.replace(tiny_run_config.train, steps=2, save_every=2, output_dir=str(tmp_path / "run"))
    policy = load_policy(train(dataclasses.replace(tiny_run_config, model=model, train=train_cfg)))
    assert policy.config.n_obs_steps == 2
    summary = evaluate(policy, EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=5, num_inference_steps=2,
                                          videos_per_task=0, output_dir=str(tmp_path / "eval")),
                       image_size=model.image_size, cameras=model.cameras)
    assert summary["tasks"]["reach"]["episodes"] == 1
    runner = LocalPolicy(policy, num_steps=2)
    assert runner.spec.image_slots == 2
    obs = blank_observation(runner.spec)
    assert runner.infer(validate_observation(obs.to_dict(), runner.spec)).shape == (model.head.horizon, 4)


def test_loop_sends_the_previous_ticks_frames():
    from test_deploy import ScriptedPolicy, make_loop, run

    policy = ScriptedPolicy(n_obs_steps=2, latency_s=0.0)
    loop, _ = make_loop(policy, max_steps=24, async_inference=False)
    run(loop)
    first = policy.images[0]
    assert np.array_equal(first[0], first[1]), "the first frame fills the history"
    # later requests carry the previous tick's frame, then this tick's (equal only if the camera had no new frame)
    assert any(not np.array_equal(images[0], images[1]) for images in policy.images[1:])
