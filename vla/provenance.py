"""Where a result came from: the commit, config, command, library versions and machine that made it.

Every results JSON a person reads (evaluation summaries, the quickstart, benchmarks) carries
`provenance(config)` under the key "provenance", so each published figure can be traced to a
command at a commit and re-made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import draccus

PACKAGES = ("torch", "transformers", "diffusers", "accelerate", "lerobot", "numpy", "mujoco", "metaworld")
REPO_ROOT = Path(__file__).resolve().parent.parent


CODE_DIR = "vla"  # the package: results depend on its code, the config and the library versions, not on docs or tests


def git_commit(root: Path = REPO_ROOT) -> dict:
    """{"commit": sha or None, "dirty": uncommitted changes to tracked files?, "code": git tree hash of vla/ at
    that commit, "code_dirty": uncommitted changes under vla/?} of the checkout holding vla. Two commits with
    the same "code" run the same package, so a result made at one may be reused at the other."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "code": None, "code_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    code_status = git("status", "--porcelain", "--untracked-files=no", "--", CODE_DIR)
    return {"commit": commit, "dirty": bool(status), "code": git("rev-parse", f"HEAD:{CODE_DIR}"),
            "code_dirty": bool(code_status)}


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    """The machine a result was made on. "boot_id" names one boot of one machine (Linux), so that a report whose
    runs span sessions can tell whether their timings come from one machine: two 2-core VMs can report the same
    platform and differ 4x in speed."""
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "device": "cpu", "boot_id": boot_id()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def boot_id() -> str | None:
    """This boot's random id (Linux), else None."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def as_plain(config) -> dict | None:
    """A dataclass config (or dict) as JSON-safe plain data; draccus keeps the `type` of choice configs
    (the head type), which dataclasses.asdict would drop."""
    if config is None:
        return None
    data = draccus.encode(config) if dataclasses.is_dataclass(config) else config
    return json.loads(json.dumps(data, default=str))


def provenance(config=None, command: list[str] | None = None) -> dict:
    """The record stored with a result: git commit (and whether the tree had uncommitted changes), the full
    config, the command line, library versions and the machine."""
    return {**git_commit(), "config": as_plain(config),
            "command": " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "versions": versions(), "machine": machine()}


def same_origin(recorded: dict | None, config) -> list[str]:
    """What differs between a stored result's provenance and a run now with `config` at this checkout:
    [] when the result may be reused, else readable reasons (other code, changed tree, other settings or
    library versions). A result made at another commit with the same vla/ tree (only docs, tests or results
    changed since) may be reused: that is what lets a benchmark longer than a session be spread over several."""
    if not recorded:
        return ["made without a provenance record"]
    reasons = code_differences(recorded, git_commit())
    if recorded.get("versions") is not None:
        changed = differing_keys(recorded["versions"], versions())
        if changed:
            reasons.append(f"made with other library versions ({', '.join(changed)})")
    if recorded.get("config") != as_plain(config):
        old, new = recorded.get("config") or {}, as_plain(config) or {}
        reasons.append(f"made with other settings ({', '.join(differing_keys(old, new)[:6])})")
    return reasons


def blocking_reasons(recorded: dict | None, config, reuse_stale: bool, what: str) -> list[str]:
    """Why a stored result (`what`: "the run folder X", ...) may not be reused with `config` at this checkout: []
    when it may. Under reuse_stale every stored result may be reused, and this says so with its reasons (the
    report names the commits). The one place where benchmarks decide what a stale result means; callers choose
    what a refusal does (raise, remake, retrain)."""
    reasons = same_origin(recorded, config)
    if reasons and reuse_stale:
        print(f"reusing {what} although it was {'; '.join(reasons)} (--reuse_stale)")
        return []
    return reasons


def code_differences(recorded: dict, now: dict) -> list[str]:
    """[] when the recorded result ran the same vla/ code as this checkout, else the reason. Records without a
    code hash (older ones) must match the commit and be clean."""
    same_code = recorded.get("code") is not None and recorded.get("code") == now.get("code")
    if recorded.get("commit") != now["commit"] and not same_code:
        made, here = str(recorded.get("commit"))[:10], str(now["commit"])[:10]
        return [f"made at commit {made} with other code under {CODE_DIR}/, this checkout is at {here}"]
    dirty = "code_dirty" if same_code else "dirty"
    if recorded.get(dirty) or now.get(dirty):
        return ["made or reused with uncommitted changes to tracked files"]
    return []


def flat_config(config) -> dict[str, Any]:
    """{"train.optim.lr": 0.0005, ...}: every leaf of a config (dataclass or plain dict) under its dotted name."""
    def walk(node, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}
    return {key.rstrip("."): value for key, value in walk(as_plain(config) or {}, "").items()}


def differing_keys(old, new) -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or nested dicts)."""
    old, new = flat_config(old), flat_config(new)
    return [key for key in sorted(set(old) | set(new)) if old.get(key, "<unset>") != new.get(key, "<unset>")]
