"""Fine-tuning: start a new run from a trained policy (`train.init_from`) and choose what trains (`train.freeze`).

    vla-train --config_path configs/finetune/10shot.yaml --model "include CKPT/config.yaml" \
        --train.init_from CKPT --data.root DATASET_ROOT --data.repo_id lab/my_robot --train.output_dir ...

`init_from` is a new run, not a resume (that stays `train.resume`, exact and strict): the policy is built from this
run's `model` config (draccus' `--model "include CKPT/config.yaml"` takes the checkpoint's, overridable field by
field, e.g. a wider `--model.max_action_dim`) on the checkpoint's backbone, and every tensor of the checkpoint
whose name and shape match is copied in. What was loaded, re-initialised (same name, other shape: the layers
that depend on the padded action / state width) and new (no such name: another head) is printed and written to
<output_dir>/init_report.json, with the config fields that differ from the checkpoint's.

- The backbone is always the checkpoint's, whole: its family must be this config's (another family is refused)
  and none of its tensors may change shape (that would be another model; refused, naming them).
- Statistics: the checkpoint's embodiments keep theirs, untouched; the dataset's embodiment is added with
  statistics of its demos. A dataset of an embodiment the checkpoint knows is normalised with the checkpoint's
  statistics (its actions / state must then be the same), so the pretrained head sees the space it learnt.
- Token heads (ar, hybrid) predict ids of the checkpoint's action tokenizer, which was fit on one embodiment's
  normalised actions: it is reused when the dataset is of that embodiment, and refused otherwise (a new
  embodiment's actions have no tokens; fine-tune a continuous head, or pretrain with its data).
- The latent head's action decoders (one per embodiment) are the checkpoint's, copied in, plus a new one for the
  dataset's embodiment when it has actions and the checkpoint has none for it (reported as new: it starts untrained);
  its latent tokens are embodiment-agnostic, so any embodiment may fine-tune it. `train.freeze '[backbone]'` (or LoRA
  with `train.lora.train_also '[head.decoders]'`) trains the decoders (+ adapters) alone.
- BAC schedules are not carried over: they were calibrated on the pretrained head's denoiser.

`freeze` keeps parameters under module-name prefixes fixed; "backbone.vision" and "backbone.language" stand for the
family's vision tower (+ projector) and language model, so a recipe reads the same for every family. LoRA
(`train.lora`) is `vla.training.lora`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from torch import nn

from vla.checkpoint import load_policy
from vla.config import ModelConfig, from_yaml
from vla.data.dataset import ChunkedDemos
from vla.data.normalize import Normalizer, has_actions
from vla.policy import VLAPolicy
from vla.provenance import differing_keys, flat_config

INIT_REPORT = "init_report.json"
UNNAMED_EMBODIMENT = "unknown"  # what load_chunked_demos calls a dataset without robot_type, entry or --data.embodiment


@dataclass
class InitReport:
    """What `init_from_checkpoint` did. reinitialised: name -> [checkpoint shape, new shape]."""

    source: str
    loaded: list[str]
    reinitialised: dict[str, list[list[int]]]
    new: list[str]
    unused: list[str]  # checkpoint tensors the new policy has no place for (e.g. the replaced head's)
    embodiments: dict  # pretrained: [names]; dataset: name; statistics: "added" | "the checkpoint's"
    config_changes: list[str]  # "field: checkpoint value -> this run's"
    action_tokenizer: str = ""
    sha256: str = ""  # of the checkpoint's weights and statistics: a resumed run must start from the same

    @property
    def fresh(self) -> list[str]:
        """Tensors that start untrained: re-initialised or new."""
        return sorted([*self.reinitialised, *self.new])

    def describe(self) -> str:
        lines = [f"init_from {self.source}: {len(self.loaded)} tensors loaded, {len(self.reinitialised)} "
                 f"re-initialised (shape changed), {len(self.new)} new, {len(self.unused)} of the checkpoint unused"]
        lines += [f"  re-initialised {name}: {old} -> {new}" for name, (old, new) in self.reinitialised.items()]
        lines += [f"  new {name}" for name in self.new[:20]] + (["  ..."] if len(self.new) > 20 else [])
        e = self.embodiments
        lines.append(f"  embodiments: {e['pretrained']} kept; dataset {e['dataset']!r}: statistics {e['statistics']}")
        lines += [f"  config {change}" for change in self.config_changes]
        if self.action_tokenizer:
            lines.append(f"  action tokenizer: {self.action_tokenizer}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))


def init_from_checkpoint(model: ModelConfig, demos: ChunkedDemos, path: str | Path,
                         dataset: str = "the fine-tuning dataset") -> tuple[VLAPolicy, InitReport]:
    """A policy of config `model` for training on `demos` (called `dataset` in errors), started from the checkpoint
    at `path` (see the module docstring); a ValueError naming the problem for another backbone family, a backbone
    tensor of another shape, a token head that cannot reuse the checkpoint's tokenizer, an unnamed or conflicting
    embodiment."""
    path = Path(path)
    saved = from_yaml(ModelConfig, str(path / "config.yaml")) if (path / "config.yaml").is_file() else None
    if saved is None:
        raise FileNotFoundError(f"train.init_from={str(path)!r} is not a policy checkpoint folder (no config.yaml); "
                                f"give a checkpoints/step_N (or checkpoints/last) folder of a vla-train run")
    check_same_family(saved, model, path)
    check_named(demos.embodiment, dataset)
    check_token_heads(saved, model, path, demos.embodiment)
    if not has_actions(demos):
        raise ValueError(f"{dataset} has no actions: train.init_from fine-tunes on labelled demos (it adds their "
                         f"robot's statistics and, for a latent head, its action decoder); to go on pretraining on "
                         f"action-free data, resume that run (train.resume) or train a new one on a mixture")
    check_latent_model(path, demos, dataset)
    model = with_pretrained_parts(model, saved, demos)
    pretrained = load_policy(path)
    normalizer, statistics = extend_normalizer(pretrained.normalizer, demos, model, path)
    backbone = dataclasses.replace(model.backbone, pretrained=str(path / "backbone"))
    config = dataclasses.replace(model, backbone=backbone)
    policy = VLAPolicy(config, normalizer, backbone=_backbone_structure(config))
    loaded, reinitialised, new, unused = copy_matching(pretrained, policy)
    check_backbone_loaded(reinitialised, new, path)
    tokenizer = pretrained.head.action_tokenizer
    if tokenizer is not None:
        policy.head.set_action_tokenizer(tokenizer)
    report = InitReport(
        source=str(path), loaded=loaded, reinitialised=reinitialised, new=new, unused=unused,
        embodiments={"pretrained": pretrained.embodiments, "dataset": demos.embodiment, "statistics": statistics},
        config_changes=config_changes(saved, model),
        action_tokenizer=(f"the checkpoint's {tokenizer.config.type} tokenizer (fit on {tokenizer.embodiment!r}), "
                          f"reused" if tokenizer is not None else ""),
        sha256=checkpoint_fingerprint(path))
    return policy.train(), report


def with_pretrained_parts(model: ModelConfig, saved: ModelConfig, demos: ChunkedDemos) -> ModelConfig:
    """`model` whose head keeps a part for each embodiment the checkpoint's head has one for (the latent head's
    action decoders, copied in) and gets one for the dataset's embodiment when it has actions (new when the
    checkpoint has none for it); other heads are unchanged."""
    kept = saved.head.embodiment_parts if saved.head.type == model.head.type else []
    added = [demos.embodiment] if has_actions(demos) else []
    return dataclasses.replace(model, head=model.head.with_embodiment_parts([*kept, *added]))


def _backbone_structure(config: ModelConfig):
    """The checkpoint's VLM (its saved HF config and processor), weights to be copied from model.safetensors."""
    from vla.backbones import VLMBackbone

    return VLMBackbone(config.backbone, load_weights=False, lm_head=config.head.uses_vocabulary)


def check_same_family(saved: ModelConfig, model: ModelConfig, path: Path) -> None:
    if saved.backbone.family != model.backbone.family:
        raise ValueError(f"train.init_from={str(path)!r} holds a {saved.backbone.family} backbone; this run's "
                         f"model.backbone.family is {model.backbone.family!r}: weights of one VLM family cannot "
                         f"start another. Fine-tune with --model.backbone.family {saved.backbone.family} (e.g. "
                         f"--model \"include {path / 'config.yaml'}\"), or train from scratch without init_from")


def check_named(embodiment: str, dataset: str) -> None:
    """Statistics are kept per embodiment name: a dataset without one would be filed under "unknown"."""
    if embodiment in ("", UNNAMED_EMBODIMENT):
        raise ValueError(f"{dataset} names no embodiment (no robot_type, registry entry or --data.embodiment, so it "
                         f"would be {UNNAMED_EMBODIMENT!r}): name the robot with --data.embodiment NAME or describe it "
                         f"with --data.embodiment_config, so that its statistics are kept apart from the checkpoint's")


def check_token_heads(saved: ModelConfig, model: ModelConfig, path: Path, embodiment: str) -> None:
    """Token heads (ar, hybrid, latent) extend the LLM's vocabulary with the checkpoint's tokens: both heads must be of
    one kind (else the token table changes shape), and an action tokenizer must be fit on the dataset's embodiment
    (the latent head's codes have none: they are the same for every embodiment)."""
    if saved.head.uses_vocabulary or model.head.uses_vocabulary:
        if saved.head.type != model.head.type:
            raise ValueError(f"train.init_from={str(path)!r} has a {saved.head.type} head, this run a "
                             f"{model.head.type} head: a token head's action tokens are part of the backbone's "
                             f"vocabulary, so it cannot be swapped for another head on init_from; keep "
                             f"--model.head.type {saved.head.type}")
    if saved.head.tokenizer_config is not None:
        meta = json.loads((path / "meta.json").read_text()).get("action_tokenizer", {})
        fit_on = meta.get("embodiment")
        if fit_on != embodiment:
            raise ValueError(f"the {saved.head.type} head of {path} predicts tokens of an action tokenizer fit on "
                             f"{fit_on!r}; the fine-tuning dataset is {embodiment!r}, whose actions those tokens do "
                             f"not encode. Fine-tune a continuous head (dit, dita, flow) for a new embodiment, or "
                             f"give data of {fit_on!r}")


def check_latent_model(path: Path, demos: ChunkedDemos, dataset: str) -> None:
    """A latent head's codes mean what the latent action model that labelled its training data says: the fine-tuning
    data must be labelled by one of the models the checkpoint was trained on (meta.json records them)."""
    labels = getattr(demos, "latent_labels", None)
    if labels is None:
        return
    trained = json.loads((path / "meta.json").read_text()).get("training") or {}
    models = {d["latent_labels"]["lam_fingerprint"] for d in trained.get("datasets", []) if "latent_labels" in d}
    if models and labels.lam_fingerprint not in models:
        raise ValueError(f"{path} was trained on the latent codes of latent action model(s) "
                         f"{sorted(m[:12] for m in models)}; {dataset} is labelled by {labels.lam} "
                         f"({labels.lam_fingerprint[:12]}), whose codes mean something else: label it with the "
                         f"checkpoint's model (`vla-latent label --lam <that model's folder>`)")


def extend_normalizer(pretrained: Normalizer, demos: ChunkedDemos, model: ModelConfig,
                      path: Path) -> tuple[Normalizer, str]:
    """The checkpoint's statistics (untouched) plus the dataset's embodiment's, in this run's padded widths;
    returns it and "added" or "the checkpoint's" (a dataset of an embodiment the checkpoint knows)."""
    name = demos.embodiment
    if pretrained.mode != model.normalization:
        raise ValueError(f"{path} normalises with {pretrained.mode!r}, this run with model.normalization="
                         f"{model.normalization!r}: one policy has one mode; set --model.normalization "
                         f"{pretrained.mode}")
    stats, info, modes = dict(pretrained.stats), dict(pretrained.info), dict(pretrained.modes)
    if name in stats:
        check_same_embodiment(pretrained, demos, path)
        status = "the checkpoint's"
    else:
        own = Normalizer.from_demos(demos, pretrained.mode)
        stats[name], info[name], status = own.stats[name], own.info[name], "added"
        modes |= own.modes
    widths = {e: (len(s["action"]["mean"]), len(s["state"]["mean"])) for e, s in stats.items()}
    too_wide = {e: w for e, w in widths.items() if w[0] > model.max_action_dim or w[1] > model.max_state_dim}
    if too_wide:
        raise ValueError(f"embodiments {too_wide} (action, state dims) do not fit model.max_action_dim="
                         f"{model.max_action_dim} / max_state_dim={model.max_state_dim}; raise them (the layers "
                         f"that depend on the width are then re-initialised)")
    return Normalizer(stats=stats, mode=pretrained.mode, max_action_dim=model.max_action_dim,
                      max_state_dim=model.max_state_dim, info=info, modes=modes), status


def check_same_embodiment(pretrained: Normalizer, demos: ChunkedDemos, path: Path) -> None:
    """A dataset named as an embodiment of the checkpoint must have its widths (and names, kind and fps, where the
    checkpoint records them): its statistics are reused."""
    name = demos.embodiment
    known = pretrained.info.get(name)
    columns = demos.numeric()
    ours = {"action dims": columns["action"].shape[-1], "state dims": columns["state"].shape[-1]}
    theirs = {"action dims": pretrained.action_dim(name), "state dims": pretrained.state_dim(name)}
    if known is not None:
        ours |= demos.info.to_dict()
        theirs |= known.to_dict()
    differ = [f"{key}: {theirs[key]} in the checkpoint, {ours[key]} in the dataset" for key in theirs
              if theirs[key] != ours[key]]
    if differ:
        raise ValueError(f"the fine-tuning dataset is embodiment {name!r}, which {path} knows otherwise (" +
                         "; ".join(differ) + "): name it differently with --data.embodiment so that it gets "
                         "statistics of its own")


def copy_matching(source: nn.Module, target: nn.Module) -> tuple[list[str], dict, list[str], list[str]]:
    """Copy every tensor of `source` into `target` whose name and shape match; returns (loaded, re-initialised
    {name: [old shape, new shape]}, new, unused) tensor names."""
    theirs, ours = source.state_dict(), target.state_dict()
    loaded = [name for name, t in ours.items() if name in theirs and theirs[name].shape == t.shape]
    reinitialised = {name: [list(theirs[name].shape), list(t.shape)] for name, t in ours.items()
                     if name in theirs and theirs[name].shape != t.shape}
    new = [name for name in ours if name not in theirs]
    target.load_state_dict({name: theirs[name] for name in loaded}, strict=False)
    return loaded, reinitialised, new, sorted(set(theirs) - set(ours))


def check_backbone_loaded(reinitialised: dict, new: list[str], path: Path) -> None:
    missed = sorted(n for n in [*reinitialised, *new] if n.startswith("backbone."))
    if missed:
        raise ValueError(f"the backbone of {path} does not fit this config: {missed[:5]} would be re-initialised "
                         f"({len(missed)} tensors); init_from keeps the checkpoint's backbone whole (same family, "
                         f"size and action-token vocabulary: model.head.tokenizer, or the latent head's "
                         f"codebook_size, as in its config.yaml)")


def config_changes(saved: ModelConfig, model: ModelConfig) -> list[str]:
    """'field: checkpoint value -> this run's' for every model field that differs (the backbone's path aside)."""
    old, new = flat_config(saved), flat_config(model)
    return [f"model.{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
            for key in differing_keys(old, new) if key != "backbone.pretrained"]


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint's weights and statistics, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "norm_stats.json"):
        with open(Path(path) / name, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def publish_init_report(report: InitReport, output_dir: str | Path) -> None:
    """Print the report and write <output_dir>/init_report.json (main process only)."""
    if PartialState().is_main_process:
        print(report.describe())
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        report.save(Path(output_dir) / INIT_REPORT)


# ---- what trains ------------------------------------------------------------------------------------------------


def module_aliases(policy: VLAPolicy) -> dict[str, list[str]]:
    """Family-independent names -> the policy's module names: backbone.vision (vision tower and projector) and
    backbone.language (the LLM)."""
    family = policy.backbone.family
    return {"backbone.vision": [f"backbone.vlm.{name}" for name in family.vision_modules],
            "backbone.language": [f"backbone.vlm.{family.language_module}"]}


def expand_aliases(pattern: str, aliases: dict[str, list[str]]) -> list[str]:
    """`pattern` with a leading alias replaced by each module it stands for ("backbone.vision.*" -> ...)."""
    for alias, targets in aliases.items():
        if pattern == alias or pattern.startswith(alias + "."):
            return [target + pattern[len(alias):] for target in targets]
    return [pattern]


def under(name: str, prefix: str) -> bool:
    """Whether parameter / module `name` is `prefix` or inside it (dotted boundaries: "head" is not "headx")."""
    return name == prefix or name.startswith(prefix + ".")


def parameters_under(policy: VLAPolicy, prefixes: list[str], option: str) -> list[str]:
    """Names of the parameters under any of `prefixes` (aliases allowed); a ValueError naming a prefix that matches
    nothing, with the policy's top modules to choose from."""
    aliases = module_aliases(policy)
    names = [name for name, _ in policy.named_parameters()]
    chosen: list[str] = []
    for prefix in prefixes:
        matched = [n for n in names if any(under(n, p) for p in expand_aliases(prefix, aliases))]
        if not matched:
            raise ValueError(f"{option}: {prefix!r} names no module of the policy; its modules are "
                             f"{top_modules(policy)} (and the aliases {sorted(aliases)})")
        chosen += matched
    return sorted(set(chosen))


def top_modules(policy: nn.Module, depth: int = 2) -> list[str]:
    """Module names up to `depth` dots deep, e.g. ["backbone", "backbone.vlm", "head", "head.net"]."""
    return [name for name, _ in policy.named_modules() if name and name.count(".") < depth]


def plain_name(name: str) -> str:
    """A tensor's name in a plain policy: peft keeps an adapted layer's own tensors under `base_layer`
    ("x.base_layer.weight" -> "x.weight")."""
    return name.replace(".base_layer.", ".")


def freeze(policy: VLAPolicy, prefixes: list[str], fresh: list[str] = ()) -> list[str]:
    """Keep the parameters under `prefixes` fixed (train.freeze) and return their names; freezing a tensor that
    starts untrained (`fresh`: re-initialised or new on init_from) is refused, as it would stay random."""
    names = parameters_under(policy, prefixes, "train.freeze")
    random = sorted({plain_name(n) for n in names} & set(fresh))
    if random:
        raise ValueError(f"train.freeze={prefixes} would keep {random[:5]} ({len(random)} tensors) at their random "
                         f"initialisation: init_from re-initialised or added them. Freeze a narrower prefix")
    params = dict(policy.named_parameters())
    for name in names:
        params[name].requires_grad_(False)
    return names
