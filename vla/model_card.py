"""The model card of a checkpoint: its README.md, as the HF hub shows it.

YAML metadata (huggingface_hub's ModelCardData: library_name vla, robotics tags, license, the training
datasets, the base VLM when it is a hub id, success rates as model-index eval results) and a body made
only from what the checkpoint folder records (vla.checkpoint, format 2: meta.json's training run and
provenance, config.yaml, norm_stats.json) plus the evaluation results of it found in its run folder:

    vla-train   <run>/checkpoints/step_N/          the checkpoint (README.md written at save)
    vla-eval    <run>/eval/summary.json            results naming the checkpoint they evaluated
    vla-eval suite   <run>/eval/suite-<name>/suite.json

`write_model_card` is called by `save_policy` and again by `vla.hub.push_to_hub`, by which time the
checkpoint may have been evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vla.action_heads.bac import load_schedules
from vla.checkpoint import CARD_FILE, SCHEDULE_FILE, read_description

RESULT_FILES = ("summary.json", "*/suite.json")  # under <run>/eval/, written by vla-eval and vla-eval suite


def write_model_card(folder: str | Path, repo_id: str | None = None, license: str | None = None,
                     eval_results: list[str | Path] | None = None) -> Path:
    """(Re)write <folder>/README.md; see `model_card`."""
    path = Path(folder) / CARD_FILE
    path.write_text(str(model_card(folder, repo_id, license, eval_results)))
    return path


def model_card(folder: str | Path, repo_id: str | None = None, license: str | None = None,
               eval_results: list[str | Path] | None = None) -> ModelCard:
    """The card of the checkpoint in `folder`. repo_id: the hub id it is published as (for the title and the
    loading snippet); eval_results: vla-eval result JSONs to report, by default those `find_eval_results` finds."""
    folder = Path(folder)
    meta, config, written = read_description(folder)
    norm = json.loads((folder / "norm_stats.json").read_text())
    results = [(Path(p), json.loads(Path(p).read_text()))
               for p in (find_eval_results(folder) if eval_results is None else eval_results)]
    # not the folder's name: vla-train writes checkpoints into a temporary folder that is renamed when complete
    name = repo_id or f"vla-{meta['head']}-{meta['backbone']['family']}"
    data = ModelCardData(library_name="vla", license=license or None, pipeline_tag="robotics",
                         tags=["robotics", "vla", f"head-{meta['head']}", meta["backbone"]["family"]],
                         datasets=[d["repo_id"] for d in (meta["training"] or {}).get("datasets", [])] or None,
                         base_model=hub_id_or_none(meta["backbone"]["source"]), model_name=name,
                         eval_results=[r for path, result in results for r in card_eval_results(result)] or None)
    sections = [f"# {name}\n\n{summary_line(meta, config)}", usage(repo_id or "path/to/this/checkpoint"),
                training_section(meta["training"]), embodiments_section(norm), model_section(meta, config, folder),
                evaluation_section(results, folder), provenance_section(meta["provenance"], written)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def find_eval_results(folder: Path) -> list[Path]:
    """Results in the checkpoint's run folder (<run>/checkpoints/<ckpt>) that name this checkpoint and were written
    after it. The time check matters for `checkpoints/last`, which moves on as training continues."""
    folder = folder.resolve()
    if folder.parent.name != "checkpoints":
        return []
    found = []
    for pattern in RESULT_FILES:
        for path in sorted((folder.parent.parent / "eval").glob(pattern)):
            result = json.loads(path.read_text())
            evaluated = result.get("checkpoint") or ((result.get("provenance") or {}).get("config") or {}).get(
                "checkpoint")
            if (evaluated and names_checkpoint(evaluated, folder)
                    and path.stat().st_mtime >= (folder / "meta.json").stat().st_mtime):
                found.append(path)
    return found


def names_checkpoint(recorded: str, folder: Path) -> bool:
    """Whether the checkpoint path a result recorded is `folder`: the same folder when the path exists from here,
    else the same <run>/checkpoints/<name> (vla-eval ran elsewhere, e.g. from the run's parent)."""
    path = Path(recorded)
    if path.exists():
        return path.resolve() == folder
    return path.parent.name == "checkpoints" and (folder.parent / path.name).resolve() == folder


def hub_id_or_none(source: str | None) -> str | None:
    """`source` when it names a hub model (org/name, not a folder that exists here), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not source or Path(source).exists() or source.count("/") != 1:
        return None
    try:
        validate_repo_id(source)
    except HFValidationError:
        return None
    return source


def summary_line(meta: dict, config: dict) -> str:
    head, family = meta["head"], meta["backbone"]["family"]
    return (f"A vla vision-language-action policy: action head `{head}` on a `{family}` "
            f"vision-language backbone, {human(meta['parameters']['total'])} parameters. It reads "
            f"{len(config['cameras'])} camera(s) at {config['image_size']}x{config['image_size']} px, the robot's "
            f"state and an instruction, and predicts chunks of {config['head']['horizon']} actions for the "
            f"embodiments below, in each embodiment's own units.")


def usage(where: str) -> str:
    return ("## Use\n\n```python\nfrom vla.policy import VLAPolicy\n\n"
            f"policy = VLAPolicy.from_pretrained(\"{where}\")  # revision=\"<branch, tag or commit>\" to pin one\n"
            "chunk = policy.predict(observation)  # vla.types.Observation -> ActionChunk [B, H, D]\n```\n\n"
            f"On a robot: `vla-serve --checkpoint {where}` (policy server) or `python deploy.py --checkpoint {where} "
            "...`; `HF_HUB_OFFLINE=1` loads it from the local HF cache without network.")


def training_section(training: dict | None) -> str:
    if training is None:
        return ("## Training data\n\nNot recorded: this checkpoint was saved outside vla-train, or by a vla older "
                "than checkpoint format 2.")
    rows = [f"| {d['repo_id']} | {d['embodiment']} | {d['episodes']} | {d['frames']} | {'; '.join(d['tasks'])} |"
            for d in training["datasets"]]
    lines = ["## Training data", "", "| dataset | embodiment | episodes | frames | tasks |", "|---|---|---|---|---|",
             *rows, "",
             f"Trained for {training['steps']} steps (of {training['planned_steps']} planned) at batch size "
             f"{training['batch_size']} on each of {training['num_processes']} process(es), seed "
             f"{training['seed']}. Dataset content sha256: "
             + ", ".join(f"`{d['fingerprint'][:12]}`" for d in training["datasets"]) + "."]
    lines += [f"- at step {h['step']}: {h['event']}" + (f" ({'; '.join(h['changes'])})" if h.get("changes") else "")
              for h in training.get("history", [])]
    return "\n".join(lines)


def embodiments_section(norm: dict) -> str:
    lines = ["## Embodiments", "", f"Normalisation: `{norm['mode']}` "
             + ("(q01..q99 of the training data -> [-1, 1])" if norm["mode"] == "quantile" else "(mean / std)")
             + f"; the heads work in a padded space of {norm['max_action_dim']} action and {norm['max_state_dim']} "
             "state dimensions.", "",
             "| embodiment | action dims | action kind | state dims | fps |", "|---|---|---|---|---|"]
    for name, stats in sorted(norm["stats"].items()):
        info = norm.get("embodiments", {}).get(name)
        action, state = len(stats["action"]["q01"]), len(stats["state"]["q01"])
        if info:
            lines.append(f"| {name} | {action}: {', '.join(info['action_names'])} | {info['action_kind']} | {state}: "
                         f"{', '.join(info['state_names'])} | {info['fps']:g} |")
        else:
            lines.append(f"| {name} | {action} | not recorded | {state} | not recorded |")
    return "\n".join(lines)


def model_section(meta: dict, config: dict, folder: Path) -> str:
    head, backbone, params = config["head"], config["backbone"], meta["parameters"]
    source = meta["backbone"]["source"]
    source_text = (f"[{source}](https://huggingface.co/{source})" if hub_id_or_none(source)
                   else f"a local folder (`{Path(source).name}`)" if source else "a source not recorded")
    settings = ", ".join(f"{k} {v}" for k, v in head.items() if k != "type" and v != "" and not isinstance(v, dict))
    lines = ["## Model", "",
             f"- head: `{head['type']}` ({settings}); full settings in `config.yaml`",
             f"- backbone: `{backbone['family']}` from {source_text}; vision "
             f"{'frozen' if backbone['freeze_vision'] else 'trained'}, language "
             f"{'frozen' if backbone['freeze_language'] else 'trained'}",
             f"- parameters: {human(params['total'])} ({human(params['backbone'])} backbone, {human(params['head'])} "
             "head)",
             f"- observation: cameras {config['cameras']} at {config['image_size']} px, {config['n_obs_steps']} "
             "frame(s) per camera"]
    if meta.get("action_tokenizer"):
        tokenizer = meta["action_tokenizer"]
        lines.append(f"- action tokenizer: `{tokenizer['type']}`, {tokenizer['vocab_size']} tokens, fit on "
                     f"{tokenizer['embodiment']} (`action_tokenizer/`)")
    if (folder / SCHEDULE_FILE).exists():
        steps = sorted(s.num_steps for s in load_schedules(folder / SCHEDULE_FILE))
        lines.append(f"- block-wise adaptive caching schedules for {steps} sampling steps (`{SCHEDULE_FILE}`)")
    return "\n".join(lines)


def evaluation_section(results: list[tuple[Path, dict]], folder: Path) -> str:
    if not results:
        return ("## Evaluation\n\nNo evaluation results of this checkpoint were found (`vla-eval --checkpoint ...` "
                "or `vla-eval suite --checkpoint ...` writes them to the run's eval/ folder).")
    lines = ["## Evaluation", "", "Closed-loop success in simulation, with 95% Wilson intervals."]
    for path, result in results:
        settings = result.get("settings", {})
        commit = (result.get("provenance") or {}).get("commit")
        lines += ["", f"### {result_title(result)}", "", "| task | success | 95% CI | episodes |", "|---|---|---|---|"]
        lines += [f"| {task} | {pct(r['success_rate'])} | {pct(r['ci95'][0])}-{pct(r['ci95'][1])} | {r['episodes']} |"
                  for task, r in result["tasks"].items()]
        overall = result.get("overall")
        mean = (f"all episodes {pct(overall['success_rate'])} ({overall['successes']}/{overall['episodes']})"
                if overall else f"mean over tasks {pct(result['mean_success_rate'])}")
        bac = "on" if settings.get("bac") else "off"
        lines += ["", f"{mean}; {settings.get('num_inference_steps', '?')} sampling steps, BAC {bac}, episode seeds "
                      f"from {settings.get('seed_start', '?')}; evaluated at commit `{(commit or 'unknown')[:12]}` "
                      f"(`{relative(path, folder)}`)."]
    return "\n".join(lines)


def provenance_section(provenance: dict | None, written: int) -> str:
    if provenance is None:
        return f"## Provenance\n\nNot recorded: checkpoint format {written} did not store the saving code's commit."
    versions = ", ".join(f"{k} {v}" for k, v in provenance["versions"].items() if v)
    dirty = " with uncommitted changes" if provenance.get("dirty") else ""
    return (f"## Provenance\n\nSaved by vla at commit `{provenance.get('commit') or 'unknown'}`{dirty}, checkpoint "
            f"format {written}. Versions: {versions}.")


def card_eval_results(result: dict) -> list[EvalResult]:
    """One model-index entry per task (success rate), as the hub lists them."""
    dataset = f"Meta-World ({result_title(result)})"
    return [EvalResult(task_type="robotics", task_name="Closed-loop control", dataset_type="metaworld",
                       dataset_name=dataset, dataset_config=task, metric_type="success_rate",
                       metric_name=f"{task} success rate", metric_value=round(r["success_rate"], 4))
            for task, r in result["tasks"].items()]


def result_title(result: dict) -> str:
    return f"vla-eval suite {result['suite']}" if "suite" in result else "vla-eval"


def relative(path: Path, folder: Path) -> str:
    run = folder.resolve().parent.parent
    try:
        return str(path.resolve().relative_to(run))
    except ValueError:
        return path.name


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def human(n: int) -> str:
    return (f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3
            else str(n))
