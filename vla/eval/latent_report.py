"""The latent-action benchmark's report: one markdown page (held-out success by arm, the gain of video pretraining
over the 10 demos alone, the labelled pretraining's figures beside where they exist, the latent action model's
diagnostics) and two PNGs (success by arm; the latent codes against the true motion)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vla.eval.fewshot_report import (  # noqa: E402
    arm_bars,
    arm_rows,
    arm_table,
    gain,
    origin,
    run_key_parts,
    save_figure,
    with_args,
)
from vla.eval.heads_report import mean_std, pct  # noqa: E402
from vla.latent.report import markdown as lam_markdown  # noqa: E402

LAM_PLOT = "latent_lam.png"


def labelled_pretraining(cfg, fewshot: dict | None) -> list[str]:
    """The few-shot benchmark's arms (pretrained on labelled demos) on the same held-out tasks, where it ran."""
    if not fewshot:
        return ["The labelled-data pretraining of the few-shot benchmark (`benchmarks/fewshot.py`) has no results "
                "file yet (`docs/results/fewshot_results.json`), so it is not compared here."]
    lines = ["The few-shot benchmark's arms (pretrained on labelled demos of the same ML10 training tasks; "
             "`fewshot_results.json`), on the held-out tasks both ran:", "",
             "| arm | mean ± std over its (task, seed) runs | runs |",
             "|---|---|---|"]
    arms: dict[str, list[float]] = {}
    for key, run in fewshot["runs"].items():
        arm, task = run_key_parts(key)
        if task in cfg.tasks:
            arms.setdefault(arm, []).append(run["tasks"][task]["success_rate"])
    lines += [f"| `{arm}` (few-shot) | {pct(mean_std(rates))} | {len(rates)} |" for arm, rates in arms.items()]
    return lines


def setup(cfg, pipeline, recipe) -> str:
    demos, tiny, ev, lam = pipeline.demos, pipeline.tiny_backbone, cfg.eval, cfg.lam
    head = pipeline.model.head
    return (f"Pretraining video ({len(demos.tasks)} tasks): {', '.join(demos.tasks)}; {demos.episodes_per_task} "
            f"scripted episodes each, written without actions or state ({demos.camera} camera, {demos.image_size} "
            f"px). Latent action model: {lam.features.type} features, C = {lam.codebook_size} codes, K = "
            f"{lam.tokens_per_frame} tokens per frame pair, {lam.stage1_steps} + {lam.stage2_steps} steps, fit on that "
            f"video only. Policy: a tiny {tiny.family} (hidden {tiny.hidden_size}, random init) + `{head.type}` head, "
            f"{pipeline.train.steps} steps of batch {pipeline.train.batch_size} on the video's latent labels "
            f"({with_args(cfg.pretrain_recipe, cfg.pretrain_args)}). Held out: {', '.join(cfg.tasks)}, "
            f"{cfg.demos_per_task} labelled demos each (the same for every arm and seed, labelled by the same latent "
            f"action model); every arm trains {recipe.train.steps} steps of batch {recipe.train.batch_size} per task "
            f"({with_args(cfg.finetune_recipe, cfg.finetune_args)}, lr {recipe.train.optim.lr:g} unless the arm sets "
            f"its own), seeds {cfg.seeds}. Closed loop on Meta-World seeds never used for demos: "
            f"{ev.episodes_per_task} episodes per task and seed, at most {ev.max_steps} actions, "
            f"{ev.schedule.execute_steps} actions per chunk.")


def minutes(timings: dict, name: str) -> str:
    return f"{timings[name] / 60:.1f} min" if name in timings else "(not recorded: made before stage times were kept)"


def markdown(cfg, pipeline, recipe, results: dict, rows: list[dict]) -> str:
    pre = results["pretrain"]
    lam_page = lam_markdown(results["lam"], "a held-out task's labelled demos").replace("latent_report.png", LAM_PLOT)
    lines = [
        "# Latent-action pretraining from video (UniVLA) on Meta-World ML10: " + " vs ".join(cfg.arms), "",
        setup(cfg, pipeline, recipe), "", origin(results, "benchmarks/latent.py", "latent_results.json"), "",
        "## Held-out tasks", "", *arm_table(cfg, rows), "",
        gain(rows, "latent", "scratch"), "", *labelled_pretraining(cfg, results.get("fewshot")), "",
        "![held-out success by arm](latent.png)", "", "## Pretraining cost", "",
        f"Video demos {minutes(pre['timings_s'], 'demos_s')}, latent action model and labels "
        f"{minutes(pre['timings_s'], 'lam_s')}, policy {pre['timings_s'].get('train_s', 0) / 3600:.2f} h "
        f"at {pre['train_s_per_step']:.3f} s/step on {pre['frames']} frames (each stage's time when it was made; the "
        f"policy's from its logged step times, resumes included).", "",
        "## The latent action model", "", *lam_page.splitlines()[1:],
    ]
    return "\n".join(lines)


def plot(cfg, rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    arm_bars(ax, cfg, rows)
    save_figure(fig, path)


def write_report(cfg, pipeline, recipe, results: dict) -> Path:
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = arm_rows(cfg, results)
    (out / "latent.md").write_text(markdown(cfg, pipeline, recipe, results, rows))
    plot(cfg, rows, out / "latent.png")
    if Path(results["lam"]["plot"]).exists():
        shutil.copy(results["lam"]["plot"], out / LAM_PLOT)
    return out / "latent.md"

