"""`vla-latent`: fit a latent action model on video, label datasets with its codes, report what the codes mean.

    vla-latent fit --root outputs/datasets/local/metaworld-1a2b3c4d --repo_id local/metaworld \\
        [--mixture '[{root: R1, repo_id: A}, {root: R2, repo_id: B, weight: 2}]'] \\
        [--lam.features.type patches|dinov2] [--lam.stage1_steps 3000 --lam.stage2_steps 3000] --output_dir outputs/lam
    vla-latent label --lam outputs/lam --root R --repo_id X
    vla-latent report --lam outputs/lam --root R --repo_id X [--output_dir outputs/lam/report]

`fit` reads frame pairs from one dataset (root / repo_id) or several (--mixture, each drawn by its weight) and
writes the model folder (lam.json, lam.safetensors) and loss.png into output_dir. `label` writes the dataset's
latent-action labels (`vla.latent.labels`: <root>/latent_actions/). `report` writes latent_report.{json,md,png}
(`vla.latent.report`). Frames are read at the model's image_size, from its camera slot, in memory (--reader memory,
the default) or streamed per pair (--reader stream, for datasets too large for memory; video or image mode).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import matplotlib

from vla.config import DATA_READERS, MixtureEntry
from vla.latent.lam import LAMConfig, LatentActionModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

REPORT_NAME = "latent_report"


@dataclass
class DatasetArgs:
    """One LeRobot dataset and how to read it."""

    root: str = ""  # the dataset's folder
    repo_id: str = ""
    embodiment_config: str = ""  # its embodiment registry entry (name or YAML); "" = LeRobot's default keys
    action_kind: str = ""  # as data.action_kind, where the dataset records none and there is no entry
    reader: str = "memory"  # memory | stream (vla.data.frames.LeRobotFrames)

    def __post_init__(self) -> None:
        if self.reader not in DATA_READERS:
            raise ValueError(f"--reader must be one of {DATA_READERS}; got {self.reader!r}")

    def entry(self) -> MixtureEntry:
        if not self.repo_id:
            raise ValueError("give the dataset: --root DIR --repo_id ID")
        return MixtureEntry(repo_id=self.repo_id, root=self.root, embodiment_config=self.embodiment_config,
                            action_kind=self.action_kind)


@dataclass
class FitConfig(DatasetArgs):
    mixture: list[MixtureEntry] = field(default_factory=list)  # several datasets (else root / repo_id)
    lam: LAMConfig = field(default_factory=LAMConfig)
    output_dir: str = "outputs/lam"


@dataclass
class LabelConfig(DatasetArgs):
    lam: str = ""  # the model folder `fit` wrote
    batch_size: int = 64  # pairs per forward pass
    num_workers: int = 0  # DataLoader workers reading pairs


@dataclass
class ReportConfig(LabelConfig):
    output_dir: str = ""  # "" = <lam>/report


def load_frames(spec: MixtureEntry, image_size: int, camera: str, reader: str) -> Any:
    """A frame source over one dataset: images at image_size, the `camera` slot only ("" = every camera; pairs read
    the first), chunks of one action (the latent action model reads none)."""
    from vla.data.dataset import load_chunked_demos
    from vla.data.frames import LeRobotFrames
    from vla.data.registry import load_embodiment

    entry = load_embodiment(spec.embodiment_config) if spec.embodiment_config else None
    slots = [camera] if camera else None
    if reader == "stream":
        return LeRobotFrames(spec.root, spec.repo_id, chunk_size=1, image_size=image_size, entry=entry,
                             embodiment=spec.embodiment, action_kind=spec.action_kind, camera_slots=slots)
    return load_chunked_demos(spec.root, spec.repo_id, chunk_size=1, embodiment=spec.embodiment,
                              action_kind=spec.action_kind, entry=entry, camera_slots=slots, image_size=image_size)


def fit(cfg: FitConfig, command: list[str] | None = None) -> Path:
    """Fit the model on cfg's datasets; returns its folder (output_dir)."""
    from vla.latent.training import fit_lam
    from vla.provenance import provenance

    specs = list(cfg.mixture) or [cfg.entry()]
    sources = [load_frames(spec, cfg.lam.image_size, cfg.lam.camera, cfg.reader) for spec in specs]
    model = fit_lam(cfg.lam, sources, weights=[spec.weight for spec in specs])
    model.info["provenance"] = provenance(cfg, command)
    out = model.save(cfg.output_dir)
    plot_history(model.info["history"], out / "loss.png")
    return out


def plot_history(history: list[dict], path: Path) -> None:
    """Reconstruction MSE against the copy baseline and code perplexity over steps, per stage."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage in (1, 2):
        rows = [h for h in history if h["stage"] == stage]
        steps = [h["step"] for h in rows]
        axes[0].plot(steps, [h["recon_mse"] for h in rows], label=f"stage {stage}")
        axes[0].plot(steps, [h["copy_mse"] for h in rows], ls="--", label=f"stage {stage} copy frame t")
        axes[1].plot(steps, [h["perplexity"] for h in rows], label=f"stage {stage}")
    axes[0].set_ylabel("MSE of the features of t + k")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("code perplexity")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_lam(folder: str) -> LatentActionModel:
    if not folder:
        raise ValueError("give the latent action model: --lam DIR (a folder `vla-latent fit` wrote)")
    return LatentActionModel.load(folder)


def label(cfg: LabelConfig) -> Path:
    """Write the dataset's labels; returns their folder."""
    from vla.latent.inference import label_source
    from vla.latent.labels import write_labels

    model = load_lam(cfg.lam)
    source = load_frames(cfg.entry(), model.config.image_size, model.config.camera, cfg.reader)
    labels = label_source(model, source, cfg.lam, cfg.batch_size, cfg.num_workers)
    return write_labels(cfg.entry().root, labels)


def report(cfg: ReportConfig, command: list[str] | None = None) -> Path:
    """Write latent_report.{json,md,png}; returns the markdown's path."""
    from vla.latent import report as diagnostics
    from vla.provenance import provenance

    model = load_lam(cfg.lam)
    source = load_frames(cfg.entry(), model.config.image_size, model.config.camera, cfg.reader)
    result = diagnostics.build_report(model, source, cfg.batch_size, cfg.num_workers)
    out = Path(cfg.output_dir or Path(cfg.lam) / "report")
    out.mkdir(parents=True, exist_ok=True)
    diagnostics.plot(result, out / f"{REPORT_NAME}.png")
    result.pop("_plots")
    result["provenance"] = provenance(cfg, command)
    (out / f"{REPORT_NAME}.json").write_text(json.dumps(result, indent=1))
    (out / f"{REPORT_NAME}.md").write_text(diagnostics.markdown(result, cfg.repo_id))
    return out / f"{REPORT_NAME}.md"


USAGE = ("usage: vla-latent fit (--root DIR --repo_id ID | --mixture '[{root: R, repo_id: ID}, ...]') [--lam.* ...] "
         "--output_dir DIR\n"
         "       vla-latent label --lam DIR --root DIR --repo_id ID\n"
         "       vla-latent report --lam DIR --root DIR --repo_id ID [--output_dir DIR]\n"
         "(vla-latent <command> --help lists every option)")


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    command, rest = (args[0], args[1:]) if args else ("", [])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if command == "fit":
        print(f"wrote {fit(draccus.parse(FitConfig, args=rest), ['vla-latent', *args])} (lam.json, "
              f"lam.safetensors, loss.png)")
    elif command == "label":
        cfg = draccus.parse(LabelConfig, args=rest)
        print(f"wrote {label(cfg)}")
    elif command == "report":
        print(f"wrote {report(draccus.parse(ReportConfig, args=rest), ['vla-latent', *args])} (+ .json, .png)")
    else:
        raise SystemExit(USAGE)


if __name__ == "__main__":
    main()
