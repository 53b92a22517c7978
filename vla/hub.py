"""Sharing checkpoints through the Hugging Face hub: push a checkpoint folder, load one by hub id and revision.

    vla-push --checkpoint outputs/train/run/checkpoints/last --repo_id org/name [--revision v1] [--license mit]
    VLAPolicy.from_pretrained("org/name", revision="v1")      # or load_policy; any vla command's --checkpoint

A hub repo holds one checkpoint folder (vla.checkpoint's SHARED_PATTERNS: no training state) and its model
card (vla.model_card). Loading goes through huggingface_hub's snapshot_download, so a hub id resolves
through the HF cache ($HF_HOME/hub/models--org--name/snapshots/<commit>), by branch, tag or commit,
and offline (HF_HUB_OFFLINE=1) from that cache alone.

PyTorchModelHubMixin is not used: it would write its own config.json and weights file, while a vla
checkpoint is the folder vla.checkpoint defines (with normaliser, backbone structure, tokenizer), so
push and load here use the hub client on that folder as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import draccus
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from vla.checkpoint import SHARED_PATTERNS, read_description


def resolve_checkpoint(path_or_repo_id: str | Path, revision: str | None = None,
                       cache_dir: str | Path | None = None) -> Path:
    """The local folder of a checkpoint: `path_or_repo_id` itself when it exists here, else the snapshot of the hub
    repo of that id at `revision` (default main) in the HF cache (`cache_dir`, default $HF_HOME/hub), downloaded
    first unless HF_HUB_OFFLINE=1."""
    path = Path(path_or_repo_id)
    if path.exists():
        if revision:
            raise ValueError(f"{path} is a local folder, which has no revisions; revision={revision!r} applies to "
                             f"hub ids only")
        return path
    name = str(path_or_repo_id)
    if not is_repo_id(name):
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=SHARED_PATTERNS,
                                      library_name="vla"))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
        where = cache_dir or "the HF cache ($HF_HOME/hub)"
        raise FileNotFoundError(f"{name!r} is neither a checkpoint folder here nor a hub model found at revision "
                                f"{revision or 'main'} (looked in {where}; with HF_HUB_OFFLINE=1 only the cache is "
                                f"read): {error}") from error


def is_repo_id(name: str) -> bool:
    """Whether `name` can be a hub model id (`name` or `org/name`), as opposed to a path (./x, /a/b/c, a/b/c)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def shared_files(folder: str | Path) -> list[str]:
    """The files of a checkpoint folder that a push uploads (paths relative to it), selected as upload_folder
    selects them."""
    folder = Path(folder).resolve()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, allow_patterns=SHARED_PATTERNS, ignore_patterns=DEFAULT_IGNORE_PATTERNS))


def push_to_hub(checkpoint: str | Path, repo_id: str, revision: str | None = None, commit_message: str | None = None,
                private: bool | None = None, license: str | None = None, eval_results: list[str | Path] | None = None,
                token: str | None = None, api: HfApi | None = None):
    """Upload the checkpoint folder to the hub model repo `repo_id` (created when missing) as one commit on branch
    `revision` (created from main when missing; default main), after rewriting its model card (README.md: see
    vla.model_card; `license`, `eval_results` go there). The commit replaces every checkpoint file of the branch
    (SHARED_PATTERNS; other files in the repo stay), so the revision holds exactly this checkpoint. Returns
    huggingface_hub's CommitInfo. `api`: an HfApi (default: a new one with `token`)."""
    from vla.model_card import write_model_card

    folder = Path(checkpoint).resolve()
    meta, _, _ = read_description(folder)  # refuses what is not a readable checkpoint before anything is sent
    write_model_card(folder, repo_id=repo_id, license=license, eval_results=eval_results)
    api = api or HfApi(token=token, library_name="vla")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    message = commit_message or f"vla checkpoint {folder.name} ({meta['head']} head)"
    return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                             commit_message=message, allow_patterns=SHARED_PATTERNS, delete_patterns=SHARED_PATTERNS)


@dataclass
class PushConfig:
    checkpoint: str = ""  # a checkpoint folder, e.g. outputs/train/quickstart/checkpoints/last
    repo_id: str = ""  # the hub model repo, org/name
    revision: str = ""  # the branch to commit to ("" = main); created from main when missing
    commit_message: str = ""
    private: bool = False  # for a repo created by this push
    license: str = ""  # the card's license (an HF license id, e.g. apache-2.0); "" = none stated
    # vla-eval result JSONs for the card; [] = those in the run's eval/ folder that name this checkpoint
    eval_results: list[str] = field(default_factory=list)
    dry_run: bool = False  # write the card and list the files a push would upload; nothing is sent


def main(args: list[str] | None = None) -> None:
    from vla.model_card import write_model_card

    cfg = draccus.parse(PushConfig, args=args)
    if not cfg.checkpoint or not cfg.repo_id:
        raise SystemExit("vla-push needs --checkpoint FOLDER and --repo_id ORG/NAME")
    if cfg.dry_run:
        card = write_model_card(cfg.checkpoint, repo_id=cfg.repo_id, license=cfg.license,
                                eval_results=cfg.eval_results or None)
        print(f"model card: {card}\nwould upload to {cfg.repo_id} ({cfg.revision or 'main'}):")
        for name in shared_files(cfg.checkpoint):
            print(f"  {name}  ({(Path(cfg.checkpoint) / name).stat().st_size} bytes)")
        return
    info = push_to_hub(cfg.checkpoint, cfg.repo_id, revision=cfg.revision or None,
                       commit_message=cfg.commit_message or None, private=cfg.private, license=cfg.license or None,
                       eval_results=cfg.eval_results or None)
    print(f"pushed {cfg.checkpoint} to {info.commit_url}")


if __name__ == "__main__":
    main()
