"""Cross-embodiment mixture run (issue 15's resolution): scripted demos of several simulated robots, one of them
passed through RLDS, train ONE policy on their weighted mixture through vla-train's config, evaluate every
embodiment closed loop.

    vla-eval mixture                                                  # configs/pretrain/sim_mixture.yaml
    vla-eval mixture --config_path configs/bench/mixture_smoke.yaml --results_dir /tmp/mixture   # plumbing, minutes

Stages, each cached or resumable like the quickstart's: demos per dataset (by config hash); for a dataset with
`rlds_entry`, its LeRobot demos exported to RLDS shards in that entry's Open-X layout and converted back by the
RLDS reader (vla-data export-rlds / convert-rlds), so the policy trains on what the RLDS path read; a tiny VLM that
knows every instruction; vla-train with data.mixture (resumes from its last checkpoint); closed-loop evaluation of
each dataset's tasks. The report (<results_dir>/mixture.md, mixture.png, summary.json with provenance) gives success
per embodiment and task with 95% intervals, the mixture's make-up and the training cost.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from vla.config import DataConfig, EvalConfig, MixtureEntry, ModelConfig, TrainConfig, parse_with_recipe  # noqa: E402
from vla.pipeline import TinyBackboneConfig  # noqa: E402
from vla.provenance import provenance  # noqa: E402
from vla.sim.demos import DemoConfig, generate_demos  # noqa: E402
from vla.sim.envs import sim_spec  # noqa: E402

DEFAULT_CONFIG = "configs/pretrain/sim_mixture.yaml"


@dataclass
class MixtureDatasetConfig:
    """One dataset of the mixture: the demos that make it, the registry entry it is read with, its weight."""

    demos: DemoConfig = field(default_factory=DemoConfig)
    embodiment_config: str = ""  # registry entry of the LeRobot dataset the policy trains on
    weight: float = 1.0
    # an RLDS registry entry (format: rlds): the demos are exported to RLDS shards in its layout and read back
    # through the RLDS reader before training ("" = trained on the demos' LeRobot dataset directly)
    rlds_entry: str = ""
    eval_tasks: list[str] = field(default_factory=list)  # closed-loop tasks; [] = the demos' tasks


@dataclass
class MixtureRunConfig:
    datasets: list[MixtureDatasetConfig] = field(default_factory=list)
    tiny_backbone: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)  # image_shift, num_workers (the datasets come from above)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # episodes, steps, schedule; tasks come from the datasets
    results_dir: str = "outputs/mixture"

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("a mixture run needs at least one dataset under `datasets`")


def dataset_source(spec: MixtureDatasetConfig) -> MixtureEntry:
    """Record (or reuse) the demos; pass them through RLDS when asked. The mixture entry vla-train reads."""
    root = generate_demos(spec.demos)
    entry = MixtureEntry(repo_id=spec.demos.repo_id, root=str(root), embodiment_config=spec.embodiment_config,
                         weight=spec.weight)
    if not spec.rlds_entry:
        return entry
    from vla.data.rlds_round_trip import through_rlds

    episodes = spec.demos.episodes_per_task * len(spec.demos.tasks)
    converted, converted_entry = through_rlds(root, spec.demos.repo_id, spec.embodiment_config, spec.rlds_entry,
                                              shards=min(4, episodes))
    return dataclasses.replace(entry, root=str(converted), repo_id=f"{spec.demos.repo_id}_rlds",
                               embodiment_config=str(converted_entry))


def build_backbone(cfg: MixtureRunConfig) -> Path:
    """A tiny random VLM of the configured family whose tokenizer knows every dataset's instructions."""
    from vla.backbones.tiny import build_tiny_vlm

    tiny = cfg.tiny_backbone
    tasks = [task for spec in cfg.datasets for task in spec.demos.tasks]
    instructions = list(dict.fromkeys(sim_spec(task).instruction for task in tasks))
    name = f"{tiny.family}-h{tiny.hidden_size}-px{cfg.model.image_size}-mixture"
    return build_tiny_vlm(tiny.family, Path(tiny.root) / name, instructions, image_size=cfg.model.image_size,
                          patch_size=tiny.patch_size, hidden_size=tiny.hidden_size, vision_layers=tiny.vision_layers,
                          text_layers=tiny.text_layers, heads=tiny.heads)


def run_mixture(cfg: MixtureRunConfig) -> dict:
    from vla.checkpoint import load_policy
    from vla.eval.rollout import run_tasks, summarize, write_video
    from vla.training.train import TrainRunConfig, train

    record = provenance(cfg)
    timings: dict[str, float] = {}
    start = time.time()
    mixture = [dataset_source(spec) for spec in cfg.datasets]
    timings["data_s"] = time.time() - start
    backbone = dataclasses.replace(cfg.model.backbone, family=cfg.tiny_backbone.family,
                                   pretrained=str(build_backbone(cfg)))
    run = TrainRunConfig(model=dataclasses.replace(cfg.model, backbone=backbone),
                         data=dataclasses.replace(cfg.data, mixture=mixture),
                         train=dataclasses.replace(cfg.train, resume=True))
    start = time.time()
    checkpoint = train(run)
    timings["train_s"] = time.time() - start
    policy = load_policy(checkpoint)
    results = {}
    for spec, source in zip(cfg.datasets, mixture, strict=True):
        tasks = spec.eval_tasks or list(spec.demos.tasks)
        evaluation = dataclasses.replace(cfg.eval, tasks=tasks)
        sampling = policy.sampling_settings(evaluation.num_inference_steps, evaluation.bac)
        start = time.time()
        episodes, latencies = run_tasks(policy, evaluation, cfg.model.image_size, cfg.model.cameras)
        embodiment = sim_spec(tasks[0]).embodiment
        timings[f"eval_{embodiment}_s"] = time.time() - start
        Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
        write_video([e for e in episodes if e.frames], Path(cfg.results_dir) / f"rollouts_{embodiment}.mp4")
        results[embodiment] = {
            "source": dataclasses.asdict(source), "through_rlds": bool(spec.rlds_entry),
            **summarize(episodes, latencies, evaluation, sampling)}
    summary = {"embodiments": results, "checkpoint": str(checkpoint), "timings_s": timings,
               "training": json.loads((checkpoint / "meta.json").read_text()).get("training"),
               "parameters": json.loads((checkpoint / "meta.json").read_text())["parameters"],
               "provenance": record}
    write_report(cfg, summary)
    return summary


def report_from_summary(summary_json: str | Path, out: str | Path) -> None:
    """mixture.md and mixture.png again from a run's summary.json (e.g. after a change to the report's layout)."""
    summary = json.loads(Path(summary_json).read_text())
    plot(summary, Path(out) / "mixture.png")
    (Path(out) / "mixture.md").write_text(markdown(summary))


def write_report(cfg: MixtureRunConfig, summary: dict) -> None:
    out = Path(cfg.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "mixture.png")
    (out / "mixture.md").write_text(markdown(summary))
    print(markdown(summary))


def rows(summary: dict) -> list[tuple[str, str, dict]]:
    return [(embodiment, task, result) for embodiment, block in summary["embodiments"].items()
            for task, result in block["tasks"].items()]


def markdown(summary: dict) -> str:
    prov = summary["provenance"]
    training = summary.get("training") or {}
    lines = [f"# One policy, several robots (commit {str(prov.get('commit'))[:10]})", "",
             f"{training.get('planned_steps')} steps of batch {training.get('batch_size')}; "
             f"{summary['parameters']['total'] / 1e6:.1f} M parameters; training "
             f"{summary['timings_s']['train_s'] / 60:.0f} min.", "",
             "| dataset | embodiment | weight | frames | through RLDS |", "|---|---|---|---|---|"]
    for dataset in training.get("datasets", []):
        block = summary["embodiments"].get(dataset["embodiment"], {})
        lines.append(f"| {dataset['repo_id']} | {dataset['embodiment']} | {dataset.get('weight', 1.0):g} | "
                     f"{dataset['frames']} | {'yes' if block.get('through_rlds') else 'no'} |")
    lines += ["", "| embodiment | task | success | 95% CI | mean length |", "|---|---|---|---|---|"]
    for embodiment, task, r in rows(summary):
        low, high = r["ci95"]
        lines.append(f"| {embodiment} | {task} | {r['successes']}/{r['episodes']} | {100 * low:.0f}-{100 * high:.0f}% "
                     f"| {r['mean_episode_length']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    entries = rows(summary)
    fig, ax = plt.subplots(figsize=(1.4 * len(entries) + 2, 3.6))
    rates = [r["success_rate"] for _, _, r in entries]
    errors = [[r["success_rate"] - r["ci95"][0] for _, _, r in entries],
              [r["ci95"][1] - r["success_rate"] for _, _, r in entries]]
    colours = {e: f"C{i}" for i, e in enumerate(summary["embodiments"])}
    ax.bar(range(len(entries)), rates, yerr=errors, color=[colours[e] for e, _, _ in entries], capsize=3)
    ax.set_xticks(range(len(entries)), [t.replace("robosuite/", "") for _, t, _ in entries], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success (95% CI)")
    ax.set_title("one policy on a cross-embodiment mixture: closed-loop success")
    ax.legend(handles=[Patch(color=colour, label=embodiment) for embodiment, colour in colours.items()], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: list[str] | None = None) -> None:
    run_mixture(parse_with_recipe(MixtureRunConfig, DEFAULT_CONFIG, args))


if __name__ == "__main__":
    main()
