"""`vla-eval suite`: Wilson intervals, the 50-task table and its difficulty groups, the suites, a tiny run."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from vla.eval.stats import wilson_interval
from vla.eval.suite import SUITES, SuiteConfig, resolve
from vla.sim.demos import EVAL_SEED_START
from vla.sim.tasks import DIFFICULTIES, TASKS, get_task, tasks_in
from vla.types import ActionChunk


def test_wilson_interval_matches_published_values_and_scipy():
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson score)
    published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                 (1, 29): (0.0061, 0.1718)}
    for (k, n), expected in published.items():
        assert np.allclose(wilson_interval(k, n), expected, atol=5e-5), (k, n)
    from scipy.stats import binomtest

    for k, n in [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (7, 20), (250, 500)]:
        reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert np.allclose(wilson_interval(k, n), (reference.low, reference.high), atol=1e-9), (k, n)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high > 0.25  # never the zero-width (0, 0) of the normal approximation
    with pytest.raises(ValueError, match="11/10"):
        wilson_interval(11, 10)


def test_task_table_has_all_50_tasks_in_the_published_difficulty_groups():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP

    assert len(TASKS) == 50 and {len(tasks_in(d)) for d in DIFFICULTIES} == {28, 11, 6, 5}
    assert [len(tasks_in(d)) for d in DIFFICULTIES] == [28, 11, 6, 5]
    assert {spec.env_name for spec in TASKS.values()} == set(ALL_V3_ENVIRONMENTS) <= set(ENV_POLICY_MAP)
    # the same split as LeRobot's copy of Seo et al. 2022 (lerobot/envs/metaworld_config.json)
    config = Path(find_spec("lerobot").submodule_search_locations[0]) / "envs" / "metaworld_config.json"
    lerobot_groups = json.loads(config.read_text())["DIFFICULTY_TO_TASKS"]
    for difficulty in DIFFICULTIES:
        assert {f"{t}-v3" for t in tasks_in(difficulty)} == set(lerobot_groups[difficulty]), difficulty
    instructions = [spec.instruction for spec in TASKS.values()]
    assert len(set(instructions)) == 50 and all(instructions)
    # instructions checkpoints were trained on must not change
    assert {t: get_task(t).instruction for t in ("reach", "push", "pick-place", "button-press-topdown",
                                                  "drawer-open")} == {
        "reach": "reach the goal", "push": "push the puck to the goal",
        "pick-place": "pick up the puck and place it at the goal",
        "button-press-topdown": "press the button from the top", "drawer-open": "open the drawer"}


def test_default_suite_spans_the_difficulty_groups_with_push_on_unseen_seeds(tmp_path):
    cfg = resolve(SuiteConfig(checkpoint=str(tmp_path / "run" / "checkpoints" / "last")))
    assert cfg.suite == "metaworld8" and len(cfg.tasks) >= 8 and "push" in cfg.tasks
    assert {"easy", "medium", "hard"} <= {get_task(t).difficulty for t in cfg.tasks}
    assert cfg.seed_start >= EVAL_SEED_START and cfg.episodes_per_task == 20 and cfg.max_steps > 0
    assert cfg.output_dir == str(tmp_path / "run" / "eval" / "suite-metaworld8")
    with pytest.raises(ValueError, match="demos use those seeds"):
        resolve(SuiteConfig(checkpoint="x", seed_start=EVAL_SEED_START - 1))
    with pytest.raises(ValueError, match="Meta-World stops there"):
        resolve(SuiteConfig(checkpoint="x", max_steps=501))
    with pytest.raises(ValueError, match="known suites"):
        resolve(SuiteConfig(checkpoint="x", suite="mt10"))
    with pytest.raises(ValueError, match="known tasks"):
        resolve(SuiteConfig(checkpoint="x", tasks=["push-v3"]))
    with pytest.raises(SystemExit, match="--checkpoint"):
        resolve(SuiteConfig())


class SimActionPolicy:
    """The rollout's policy interface around `act(env, generator) -> action [4]`: a chunk of one action per step.
    The env is the one `run_tasks` builds for each task (caught at vla.eval.rollout.make_env)."""

    embodiments = None
    config = SimpleNamespace(head=SimpleNamespace(horizon=1), n_obs_steps=1)

    def __init__(self, act):
        self.act, self.env = act, None

    def eval(self):
        return self

    def predict(self, observation, generator, **_):
        action = torch.as_tensor(self.act(self.env, generator), dtype=torch.float32)
        return ActionChunk(actions=action[None, None], mask=torch.ones(1, len(action), dtype=torch.bool))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "act"), [
    ("expert", lambda env, generator: env.expert_action()),
    ("random", lambda env, generator: 2 * torch.rand(4, generator=generator) - 1),
])
def test_suite_metric_scores_the_scripted_expert_high_and_random_actions_low(name, act, monkeypatch):
    """The suite's own rollouts and success metric (run_tasks, summarize, group_results) on its seeds and step
    limit, 3 episodes per task: Meta-World's scripted experts >= 90%, uniform random actions <= 10% (once measured
    on 10 episodes per task: 80/80 and 0/80), so the metric can fail."""
    from vla.deploy.chunking import ScheduleConfig
    from vla.eval import rollout
    from vla.eval.suite import group_results

    policy = SimActionPolicy(act)
    build = rollout.make_env

    def make_env(*args, **kwargs):
        policy.env = build(*args, **kwargs)
        return policy.env

    monkeypatch.setattr(rollout, "make_env", make_env)
    cfg = resolve(SuiteConfig(checkpoint="x", episodes_per_task=3, videos_per_task=0,
                              schedule=ScheduleConfig(execute_steps=1)))
    episodes, latencies = rollout.run_tasks(policy, cfg, image_size=8, cameras="corner")
    results = rollout.summarize(episodes, latencies, cfg, sampling={})
    groups, overall = group_results(results["tasks"])
    assert overall["episodes"] == 24 and set(groups) == set(DIFFICULTIES)
    assert all(s >= cfg.seed_start for t in results["tasks"].values() for s in t["seeds"])
    if name == "expert":
        assert overall["success_rate"] >= 0.9, results["tasks"]
    else:
        assert overall["success_rate"] <= 0.1, results["tasks"]
        assert all(t["mean_episode_length"] == cfg.max_steps for t in results["tasks"].values() if not t["successes"])


def test_mt50_enumerates_50_tasks_and_their_envs_build():
    """Evaluation needs only the env and its instruction. Building all 50 costs ~25-40 s on CPU (a GL context
    each), so this builds, resets and renders every fifth MT50 task (all four groups) and the default suite's."""
    from vla.sim import MetaWorldEnv

    cfg = resolve(SuiteConfig(checkpoint="x", suite="mt50"))
    assert len(cfg.tasks) == 50 and cfg.episodes_per_task == 10
    assert [get_task(t).difficulty for t in cfg.tasks] == sorted((get_task(t).difficulty for t in cfg.tasks),
                                                                 key=DIFFICULTIES.index)
    sample = list(dict.fromkeys(cfg.tasks[::5] + list(SUITES["metaworld8"].tasks)))
    assert {get_task(t).difficulty for t in sample} == set(DIFFICULTIES)
    for task in sample:
        env = MetaWorldEnv(task, seed=cfg.seed_start, image_size=8, max_steps=cfg.max_steps)
        try:
            obs = env.reset()
            assert obs["instruction"] == get_task(task).instruction and obs["image"].shape == (8, 8, 3)
            assert np.any(obs["state"][4:] != 0) == get_task(task).goal_in_state, task
        finally:
            env.close()


def test_suite_on_tiny_checkpoint_writes_report_plot_videos_and_results(tiny_checkpoint, tmp_path, capsys):
    from vla.eval.cli import main

    args = [f"--checkpoint={tiny_checkpoint}", "--tasks=[reach,push]", "--episodes_per_task=1", "--max_steps=4",
            "--num_inference_steps=2"]
    main(["suite", *args, f"--output_dir={tmp_path / 'a'}"])
    out = tmp_path / "a"
    for name in ("suite.json", "report.md", "suite.png", "videos/reach.mp4", "videos/push.mp4"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "suite.json").read_text())
    assert results["provenance"]["commit"] and results["provenance"]["config"]["tasks"] == ["reach", "push"]
    assert list(results["groups"]) == ["easy", "hard"] and results["overall"]["episodes"] == 2
    reach, push = results["tasks"]["reach"], results["tasks"]["push"]
    assert reach["seeds"] == [EVAL_SEED_START] and reach["mean_episode_length"] <= 4
    assert reach["ci95"] == list(wilson_interval(reach["successes"], 1))
    # the tiny checkpoint was trained on reach and button-press-topdown demos
    assert (reach["in_training_demos"], push["in_training_demos"]) == (True, False)
    report = (out / "report.md").read_text()
    assert report.startswith("# `vla-eval suite`: metaworld8 (its task list replaced by --tasks)")
    assert "| push | hard |" in report and "no demos for 1 of the 2 tasks: push" in report
    assert "Evo-1" in report and "not measured here" in report and "Wilson" in report
    assert "report.md" in capsys.readouterr().out
    # same checkpoint, same seeds: the same episodes, frame for frame (the frames show where the actions took the arm)
    main(["suite", *args, f"--output_dir={tmp_path / 'b'}"])
    assert json.loads((tmp_path / "b" / "suite.json").read_text())["tasks"] == results["tasks"]
    first, second = (np.stack(imageio.mimread(tmp_path / run / "videos" / "push.mp4")) for run in "ab")
    assert len(first) == 5 and np.array_equal(first, second) and not np.array_equal(first[0], first[-1])
