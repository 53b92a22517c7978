"""The quickstart pipeline end to end at toy size: demos -> tiny VLM -> train -> closed-loop eval."""

import json

from vla.action_heads import DiTHeadConfig
from vla.config import EvalConfig, ModelConfig, TrainConfig
from vla.deploy.chunking import ScheduleConfig
from vla.pipeline import PipelineConfig, TinyBackboneConfig, run_pipeline
from vla.training.logging import read_metrics


def test_quickstart_smoke(tiny_demo_config, tmp_path):
    cfg = PipelineConfig(
        demos=tiny_demo_config,
        tiny_backbone=TinyBackboneConfig(root=str(tmp_path / "vlm"), hidden_size=32, heads=2),
        model=ModelConfig(head=DiTHeadConfig(horizon=4, hidden=32, depth=2, heads=2, noise_samples_per_cond=2)),
        train=TrainConfig(steps=6, batch_size=4, log_every=3, save_every=6, output_dir=str(tmp_path / "train")),
        eval=EvalConfig(tasks=["reach"], episodes_per_task=2, max_steps=12, num_inference_steps=2,
                        schedule=ScheduleConfig(execute_steps=2), videos_per_task=1),
        results_dir=str(tmp_path / "results"),
    )
    summary = run_pipeline(cfg)
    results = tmp_path / "results"
    for name in ("summary.json", "success.png", "loss_curve.png", "rollouts.mp4"):
        assert (results / name).stat().st_size > 0, name
    written = json.loads((results / "summary.json").read_text())
    assert written["tasks"]["reach"]["episodes"] == 2
    assert written["tasks"]["reach"]["seeds"] == [100_000, 100_001]  # never demo seeds
    assert 0 < written["tasks"]["reach"]["mean_episode_length"] <= 12
    assert summary["parameters"]["total"] > summary["parameters"]["head"] > 0
    # a second run reuses the demos and the finished training instead of redoing them
    logged_steps = read_metrics(tmp_path / "train" / "metrics.csv")["step"]
    again = run_pipeline(cfg)
    assert read_metrics(tmp_path / "train" / "metrics.csv")["step"] == logged_steps == [3.0, 6.0]
    assert again["tasks"] == summary["tasks"]  # same checkpoint, same seeds -> same rollouts
