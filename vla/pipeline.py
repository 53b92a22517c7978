"""The demos -> train -> closed-loop evaluation pipeline, as one library call: `run_pipeline(cfg)`.

Scripted Meta-World demos (a LeRobot dataset) -> a tiny VLM of a real HF class, built and saved
locally (no weights can be downloaded here) -> training -> evaluation on unseen seeds -> results
(summary.json with provenance, success.png, loss_curve.png, rollouts.mp4) in cfg.results_dir.
The quickstart (`vla.quickstart`) and the head benchmark (`vla.eval.heads_benchmark`) both run it.

Every stage is cached or resumable: demos are reused when the same config made them, the tiny VLM
is reused, and training resumes from its last checkpoint (a finished run is not retrained).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vla.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from vla.provenance import provenance
from vla.sim.demos import DemoConfig, generate_demos
from vla.sim.metaworld_env import get_task


@dataclass
class TinyBackboneConfig:
    """A randomly initialised VLM of a real HF class, built locally (no weights can be downloaded here)."""

    family: str = "paligemma"
    root: str = "outputs/tiny_vlm"
    patch_size: int = 8
    hidden_size: int = 128
    vision_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    # tasks whose instructions the text tokenizer also learns besides the demos' (tasks a policy will later be
    # fine-tuned on: a real VLM's vocabulary knows their words too)
    extra_tasks: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    demos: DemoConfig = field(default_factory=DemoConfig)
    tiny_backbone: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    results_dir: str = "outputs/quickstart"


def build_backbone(cfg: PipelineConfig) -> Path:
    from vla.backbones.tiny import build_tiny_vlm

    tiny = cfg.tiny_backbone
    instructions = [get_task(t).instruction for t in cfg.demos.tasks + tiny.extra_tasks]
    name = f"{tiny.family}-h{tiny.hidden_size}-px{cfg.demos.image_size}"
    return build_tiny_vlm(tiny.family, Path(tiny.root) / name, instructions, image_size=cfg.demos.image_size,
                          patch_size=tiny.patch_size, hidden_size=tiny.hidden_size, vision_layers=tiny.vision_layers,
                          text_layers=tiny.text_layers, heads=tiny.heads)


def wire(cfg: PipelineConfig, dataset_dir: Path, backbone_dir: Path) -> PipelineConfig:
    """Point the model and data sections at what the earlier stages produced."""
    backbone = dataclasses.replace(cfg.model.backbone, family=cfg.tiny_backbone.family, pretrained=str(backbone_dir))
    model = dataclasses.replace(cfg.model, backbone=backbone, image_size=cfg.demos.image_size,
                                cameras=[cfg.demos.camera])
    data = dataclasses.replace(cfg.data, root=str(dataset_dir), repo_id=cfg.demos.repo_id)
    train = dataclasses.replace(cfg.train, resume=True)
    evaluation = dataclasses.replace(cfg.eval, output_dir=cfg.eval.output_dir or str(Path(cfg.results_dir) / "eval"),
                                     privileged_state=cfg.demos.privileged_state)
    return dataclasses.replace(cfg, model=model, data=data, train=train, eval=evaluation)


def train_stage(cfg: PipelineConfig, timings: dict | None = None) -> tuple[PipelineConfig, Path]:
    """Demos, tiny VLM and training, each cached or resumed: (the config wired to what they produced, the final
    checkpoint). A finished run is returned without training. `timings` (if given) gets demos_s and train_s."""
    from vla.training.train import TrainRunConfig, train

    timings = {} if timings is None else timings
    start = time.time()
    dataset_dir = generate_demos(cfg.demos)
    timings["demos_s"] = time.time() - start
    cfg = wire(cfg, dataset_dir, build_backbone(cfg))
    start = time.time()
    checkpoint = train(TrainRunConfig(model=cfg.model, data=cfg.data, train=cfg.train))
    timings["train_s"] = time.time() - start
    return cfg, checkpoint


def run_pipeline(cfg: PipelineConfig) -> dict:
    from vla.checkpoint import load_policy
    from vla.eval.report import print_summary
    from vla.eval.rollout import evaluate

    record = provenance(cfg)  # the config as given, before the stages fill in their paths

    timings: dict = {}
    cfg, checkpoint = train_stage(cfg, timings)
    start = time.time()
    policy = load_policy(checkpoint)
    summary = evaluate(policy, cfg.eval, cfg.demos.image_size, cfg.demos.camera)
    timings["eval_s"] = time.time() - start
    summary["timings_s"] = timings
    summary["checkpoint"] = str(checkpoint)
    summary["parameters"] = json.loads((checkpoint / "meta.json").read_text())["parameters"]
    summary["provenance"] = record
    write_results(cfg, summary)
    print_summary(summary)
    print(f"results: {cfg.results_dir} (summary.json, success.png, loss_curve.png, rollouts.mp4)")
    return summary


def write_results(cfg: PipelineConfig, summary: dict) -> None:
    results = Path(cfg.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.copy(Path(cfg.train.output_dir) / "loss_curve.png", results / "loss_curve.png")
    for name in ("success.png", "rollouts.mp4"):
        source = Path(cfg.eval.output_dir) / name
        if source.exists() and source.resolve() != (results / name).resolve():
            shutil.copy(source, results / name)
