"""Hub-style sharing: checkpoint format versions and migrations, push_to_hub, loading by hub id and revision
through a real HF cache layout, and the model card. No network: pushes go to FakeHub, a recording stand-in for
HfApi that keeps each commit where snapshot_download finds it offline."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, scan_cache_dir
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from safetensors import safe_open
from safetensors.torch import load_file

from vla.checkpoint import FORMAT_VERSION, MIGRATIONS, SHARED_PATTERNS, load_policy
from vla.hub import push_to_hub, resolve_checkpoint
from vla.model_card import human
from vla.types import Observation

DATA = Path(__file__).parent / "data"
FROZEN = sorted(DATA.glob("checkpoint_v*/*/meta.json"))  # one per (format, head)
REPO = "test-org/tiny-vla"


class FakeHub:
    """Stands in for HfApi's create_repo / create_branch / upload_folder (argument names checked against HfApi's
    own). Each upload becomes a commit stored as the HF cache stores a download: <cache>/models--org--name/
    blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<branch> = commit. Files are chosen
    with huggingface_hub's own filter (allow / ignore patterns, its default ignores), and a commit keeps the
    branch's earlier files unless delete_patterns match them, as on the hub."""

    def __init__(self, cache_dir: Path):
        self.cache_dir, self.calls, self.repos = Path(cache_dir), [], set()

    def record(self, method: str, **kwargs) -> None:
        inspect.signature(getattr(HfApi, method)).bind(None, **kwargs)  # a TypeError if HfApi would refuse them
        self.calls.append((method, kwargs))

    def storage(self, repo_id: str) -> Path:
        return self.cache_dir / f"models--{repo_id.replace('/', '--')}"

    def create_repo(self, repo_id: str, **kwargs):
        self.record("create_repo", repo_id=repo_id, **kwargs)
        if repo_id in self.repos and not kwargs.get("exist_ok"):
            raise FileExistsError(repo_id)
        self.repos.add(repo_id)

    def create_branch(self, repo_id: str, **kwargs):
        self.record("create_branch", repo_id=repo_id, **kwargs)
        refs = self.storage(repo_id) / "refs"
        if (refs / "main").exists() and not (refs / kwargs["branch"]).exists():
            shutil.copy(refs / "main", refs / kwargs["branch"])
        (refs / kwargs["branch"]).parent.mkdir(parents=True, exist_ok=True)
        (refs / kwargs["branch"]).touch()  # an empty branch of an empty repo

    def upload_folder(self, **kwargs) -> CommitInfo:
        self.record("upload_folder", **kwargs)
        repo_id, branch, folder = kwargs["repo_id"], kwargs.get("revision") or "main", Path(kwargs["folder_path"])
        assert repo_id in self.repos, "upload to a repo that was never created"
        storage = self.storage(repo_id)
        ref = storage / "refs" / branch
        if branch != "main" and not ref.exists():
            raise ValueError(f"revision {branch} does not exist (the hub refuses a commit to a missing branch)")
        parent = ref.read_text() if ref.exists() else ""
        files = {}
        if parent:
            old = storage / "snapshots" / parent
            kept = [p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file()]
            deleted = set(filter_repo_objects(kept, allow_patterns=kwargs.get("delete_patterns")))
            files = {name: (old / name).read_bytes() for name in kept if name not in deleted}
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        ignore = list(kwargs.get("ignore_patterns") or []) + DEFAULT_IGNORE_PATTERNS
        chosen = list(filter_repo_objects(local, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=ignore))
        files |= {name: (folder / name).read_bytes() for name in chosen}
        commit = hashlib.sha1((parent + repr(sorted((n, hashlib.sha256(b).hexdigest()) for n, b in files.items())))
                              .encode()).hexdigest()
        for name, content in files.items():
            blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
            link = storage / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}",
                          commit_message=kwargs["commit_message"], commit_description="", oid=commit)

    def uploaded(self, index: int = -1) -> list[str]:
        """The files of the index-th upload_folder call."""
        kwargs = [k for m, k in self.calls if m == "upload_folder"][index]
        folder = Path(kwargs["folder_path"])
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return list(filter_repo_objects(local, allow_patterns=kwargs["allow_patterns"],
                                        ignore_patterns=DEFAULT_IGNORE_PATTERNS))


def frozen_observation() -> tuple[Observation, dict, dict]:
    """The observation stored with the frozen checkpoints, each head's expected actions and sampling options."""
    path = DATA / "checkpoint_v1" / "expected.safetensors"
    tensors, metadata = load_file(str(path)), safe_open(str(path), "pt").metadata()
    obs = Observation(images=tensors["images"], state=tensors["state"], instruction=[metadata["instruction"]],
                      embodiment=[metadata["embodiment"]])
    return obs, tensors, json.loads(metadata["options"])


def act(policy, obs: Observation, **options) -> torch.Tensor:
    with torch.no_grad():
        return policy.predict(obs, generator=torch.Generator().manual_seed(0), **options).actions


def file_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint_v2(tmp_path_factory) -> Path:
    """The frozen format-1 dit checkpoint loaded and saved again by this code (format 2), plus a training state
    folder and a stray file, which a push must leave behind."""
    path = tmp_path_factory.mktemp("v2") / "dit"
    load_policy(DATA / "checkpoint_v1" / "dit").save_pretrained(path)
    (path / "training_state").mkdir()
    (path / "training_state" / "optimizer.safetensors").write_bytes(b"resume only")
    (path / "notes.txt").write_text("not part of the checkpoint")
    return path


# --- format versions and migrations ---


@pytest.mark.parametrize("meta", FROZEN, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_checkpoints_of_older_formats_load_and_act_the_same(meta, tmp_path):
    """A checkpoint written by an older vla (tests/data/checkpoint_v<N>, frozen) loads with this code, unchanged
    on disk, and predicts the actions it predicted when written; saved again it is in the current format and acts
    the same."""
    folder = meta.parent
    obs, tensors, options = frozen_observation()
    before = file_digests(folder)
    policy = load_policy(folder)
    actions = act(policy, obs, **options[folder.name])
    torch.testing.assert_close(actions, tensors[f"{folder.name}_actions"], rtol=1e-5, atol=1e-5)
    assert file_digests(folder) == before  # migrated in memory only
    policy.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "meta.json").read_text())["format_version"] == FORMAT_VERSION
    torch.testing.assert_close(act(load_policy(tmp_path / "resaved"), obs, **options[folder.name]), actions,
                               rtol=0, atol=0)


def test_every_older_format_has_a_migration_and_a_frozen_checkpoint():
    """Bumping FORMAT_VERSION without a migration, or without freezing a checkpoint of the outgoing format, fails."""
    assert sorted(MIGRATIONS) == list(range(1, FORMAT_VERSION))
    frozen = {int(p.parent.parent.name.removeprefix("checkpoint_v")) for p in FROZEN}
    assert frozen == set(range(1, FORMAT_VERSION))
    assert {p.parent.name for p in FROZEN} == {"dit", "ar"}


def test_a_newer_or_unknown_format_is_refused_naming_the_versions(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(DATA / "checkpoint_v1" / "dit", folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"format_version {FORMAT_VERSION + 1}; this vla reads formats 1 to "
                                         f"{FORMAT_VERSION}: it was written by a newer vla, upgrade vla"):
        load_policy(folder)
    (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "format_version"}))
    with pytest.raises(ValueError, match="format_version None.*corrupt or not a vla checkpoint"):
        load_policy(folder)


# --- push and load by hub id ---


def test_push_uploads_the_checkpoint_and_its_card_and_nothing_else(checkpoint_v2, tmp_path):
    hub = FakeHub(tmp_path / "cache")
    info = push_to_hub(checkpoint_v2, REPO, revision="v1.0", license="apache-2.0", commit_message="first", api=hub)
    methods = [m for m, _ in hub.calls]
    assert methods == ["create_repo", "create_branch", "upload_folder"]  # the branch exists before the commit
    assert hub.calls[0][1] == {"repo_id": REPO, "repo_type": "model", "private": None, "exist_ok": True}
    upload = hub.calls[2][1]
    assert upload["revision"] == "v1.0" and upload["commit_message"] == "first"
    assert upload["delete_patterns"] == SHARED_PATTERNS  # the branch then holds exactly this checkpoint
    files = hub.uploaded()
    assert "training_state/optimizer.safetensors" not in files and "notes.txt" not in files
    assert {"README.md", "config.yaml", "model.safetensors", "norm_stats.json", "meta.json",
            "backbone/config.json", "backbone/tokenizer.json"} <= set(files)
    card = ModelCard.load(checkpoint_v2 / "README.md")
    assert card.data.library_name == "vla" and card.data.license == "apache-2.0"
    assert {"robotics", "vla", "head-dit"} <= set(card.data.tags)
    assert f'VLAPolicy.from_pretrained("{REPO}")' in card.text
    assert info.oid == (hub.storage(REPO) / "refs" / "v1.0").read_text()


def test_push_of_a_token_head_carries_its_action_tokenizer(tmp_path):
    folder = tmp_path / "ar"
    load_policy(DATA / "checkpoint_v1" / "ar").save_pretrained(folder)
    hub = FakeHub(tmp_path / "cache")
    push_to_hub(folder, REPO, api=hub)
    assert [m for m, _ in hub.calls] == ["create_repo", "upload_folder"]  # main: no branch to create
    assert "action_tokenizer/action_tokenizer.json" in hub.uploaded()


@pytest.fixture(scope="module")
def hub_cache(checkpoint_v2, tmp_path_factory):
    """REPO in an HF cache with two pushes: `checkpoint_v2` on main, and on branch v2 the same checkpoint with
    perturbed head weights. Returns the cache dir, the main commit and the two local folders."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    changed = tmp_path_factory.mktemp("changed") / "dit"
    policy = load_policy(checkpoint_v2)
    with torch.no_grad():
        for param in policy.head.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    policy.save_pretrained(changed)
    hub = FakeHub(cache)
    first = push_to_hub(checkpoint_v2, REPO, api=hub)
    push_to_hub(changed, REPO, revision="v2", api=hub)
    return cache, first.oid, checkpoint_v2, changed


def test_a_hub_id_loads_each_revision_from_the_cache(hub_cache):
    """Offline, a hub id resolves through the HF cache by branch or commit: main and v2 hold different weights
    and give different actions, each equal to its local folder's."""
    cache, main_commit, main_folder, changed_folder = hub_cache
    repo = {r.repo_id: r for r in scan_cache_dir(cache).repos}[REPO]  # huggingface_hub reads the layout as its own
    assert sorted(sorted(r.refs) for r in repo.revisions) == [["main"], ["v2"]]
    obs, _, options = frozen_observation()
    expected_main = act(load_policy(main_folder), obs, **options["dit"])
    expected_v2 = act(load_policy(changed_folder), obs, **options["dit"])
    assert (expected_main - expected_v2).abs().max() > 1e-3
    for revision, expected in ((None, expected_main), ("main", expected_main), (main_commit, expected_main),
                               ("v2", expected_v2)):
        policy = load_policy(REPO, revision=revision, cache_dir=cache)
        torch.testing.assert_close(act(policy, obs, **options["dit"]), expected, rtol=0, atol=0)
    from vla.deploy.protocol import ObservationMessage
    from vla.deploy.runner import LocalPolicy  # vla-deploy and vla-serve: --checkpoint REPO --revision v2

    local = LocalPolicy.from_checkpoint(REPO, revision="v2", cache_dir=cache, num_steps=options["dit"]["num_steps"])
    message = ObservationMessage(obs.images[0].numpy(), obs.state[0].numpy(), obs.instruction[0], obs.embodiment[0])
    assert torch.equal(torch.from_numpy(local.infer(message)), expected_v2[0])
    snapshot = resolve_checkpoint(REPO, revision="v2", cache_dir=cache)
    assert snapshot == cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / (
        cache / f"models--{REPO.replace('/', '--')}" / "refs" / "v2").read_text()
    assert "training_state" not in {p.name for p in snapshot.iterdir()}


def test_hub_id_errors_name_the_id_and_revision(hub_cache, tmp_path):
    cache, _, main_folder, _ = hub_cache
    with pytest.raises(FileNotFoundError, match="'test-org/tiny-vla' is neither a checkpoint folder here nor a hub "
                                                "model found at revision v9"):
        load_policy(REPO, revision="v9", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="'test-org/absent' is neither"):
        load_policy("test-org/absent", cache_dir=cache)
    with pytest.raises(ValueError, match="is a local folder, which has no revisions"):
        load_policy(main_folder, revision="v2")
    with pytest.raises(FileNotFoundError, match="checkpoint folder outputs/a/b does not exist"):
        load_policy("outputs/a/b")  # a path, never looked up on the hub


def test_hf_home_and_offline_mode_resolve_a_hub_id_in_a_fresh_process(hub_cache):
    """What a user does: HF_HOME names the cache, HF_HUB_OFFLINE=1, and any vla entry point gets a hub id."""
    cache, _, _, changed_folder = hub_cache
    code = ("import sys; from vla.policy import VLAPolicy\n"
            f"policy = VLAPolicy.from_pretrained({REPO!r}, revision='v2')\n"
            "print(policy.config.backbone.pretrained)\n")
    env = {**os.environ, "HF_HOME": str(cache.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    commit = (cache / f"models--{REPO.replace('/', '--')}" / "refs" / "v2").read_text()
    assert result.stdout.strip().splitlines()[-1].endswith(f"snapshots/{commit}/backbone")


def test_vla_push_dry_run_lists_the_files_and_sends_nothing(checkpoint_v2, capsys):
    from vla.hub import main

    main([f"--checkpoint={checkpoint_v2}", f"--repo_id={REPO}", "--dry_run=true"])
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "README.md" in out and "training_state" not in out
    assert "notes.txt" not in out


# --- the model card of a real run ---


def test_model_card_of_a_trained_and_evaluated_checkpoint(tiny_checkpoint, tiny_run_config, tmp_path):
    """A vla-train run (10 steps on the tiny Meta-World demos) evaluated by vla-eval on `last`: step 10's card
    reports the data, embodiment, model, steps, the success on reach and the provenance; step 5's card reports
    no evaluation (the result names `last`, which is step 10)."""
    from vla.eval.cli import main as vla_eval
    from vla.training.train import load_demos

    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run, symlinks=True)
    vla_eval([f"--checkpoint={run / 'checkpoints' / 'last'}", "--tasks=[reach]", "--episodes_per_task=1",
              "--max_steps=2", "--videos_per_task=0"])
    assert (run / "eval" / "summary.json").exists()
    hub = FakeHub(tmp_path / "cache")
    push_to_hub(run / "checkpoints" / "last", REPO, license="mit", api=hub)
    card = ModelCard.load(run / "checkpoints" / "step_0000010" / "README.md")
    meta = json.loads((run / "checkpoints" / "step_0000010" / "meta.json").read_text())
    demos = load_demos(tiny_run_config.model, tiny_run_config.data)

    assert card.data.library_name == "vla" and card.data.license == "mit" and card.data.pipeline_tag == "robotics"
    assert card.data.datasets == ["test/tiny"]
    assert [(r.dataset_config, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("reach", "success_rate", 0.0)]  # 2 steps: not solved
    body = card.text
    assert (f"| test/tiny | {demos.embodiment} | 4 | {len(demos)} | "
            + "; ".join(demos.tasks) + " |") in body
    assert "Trained for 10 steps (of 10 planned) at batch size 8 on each of 1 process(es), seed 0" in body
    names = ", ".join(demos.action_names)
    assert f"| {demos.embodiment} | 4: {names} | {demos.action_kind} |" in body
    assert "Normalisation: `quantile`" in body
    assert f"- parameters: {human(meta['parameters']['total'])}" in body and "- head: `dit` (" in body
    assert "`paligemma` from a local folder (`paligemma`)" in body
    assert "| reach | 0.0% | 0.0%-" in body and "`eval/summary.json`" in body
    assert f"Saved by vla at commit `{meta['provenance']['commit']}`" in body
    assert meta["training"]["steps"] == 10 and meta["training"]["datasets"][0]["episodes"] == 4

    from vla.model_card import model_card

    earlier = model_card(run / "checkpoints" / "step_0000005")
    assert "No evaluation results of this checkpoint were found" in earlier.text
    assert "Trained for 5 steps (of 10 planned)" in earlier.text
    written_at_save = (run / "checkpoints" / "step_0000005" / "README.md").read_text()
    assert "Trained for 5 steps (of 10 planned)" in written_at_save and ".tmp" not in written_at_save


def test_a_result_older_than_the_checkpoint_is_not_its_result(tmp_path, checkpoint_v2):
    """`last` moved on after an evaluation: the evaluation predates the checkpoint, so it is not reported."""
    from vla.model_card import find_eval_results

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "eval").mkdir()
    result = run / "eval" / "summary.json"
    result.write_text(json.dumps({"tasks": {}, "provenance": {"config": {"checkpoint": "run/checkpoints/last"}}}))
    os.utime(result, (1, 1))
    shutil.copytree(checkpoint_v2, run / "checkpoints" / "step_0000002")
    (run / "checkpoints" / "last").symlink_to("step_0000002")
    assert find_eval_results(run / "checkpoints" / "last") == []
    os.utime(result)  # now: written after the checkpoint
    assert find_eval_results(run / "checkpoints" / "last") == [result]


def test_a_new_save_keeps_the_backbone_source(tiny_checkpoint, tiny_vlm_path, tmp_path):
    """Loading and saving again (as fine-tuning does) records the VLM the weights came from, not the checkpoint's
    backbone/ folder; the training run is recorded only by vla-train, so a plain save stores none."""
    policy = load_policy(tiny_checkpoint)
    policy.save_pretrained(tmp_path / "again")
    meta = json.loads((tmp_path / "again" / "meta.json").read_text())
    assert meta["backbone"] == {"family": "paligemma", "source": str(tiny_vlm_path)}
    assert meta["training"] is None
