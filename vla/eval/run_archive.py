"""Keep a benchmark's finished runs in the repository, so that a benchmark longer than a session can be spread
over several.

A run folder (<output_dir>/<run>) holds checkpoints and videos, too large to commit, beside the small records the
report is made from (summary.json, provenance.json, the training metrics, the tokenizer fit report, cached
evaluation summaries). `archive_run` copies those records into a folder that is committed (docs/results/...);
`restore_run` copies them back into a run folder that has no summary yet, when the archived run was made with
the same code under vla/, the same settings and library versions (`vla.provenance.blocking_reasons`, the check a run
made in this session passes too); otherwise the run is made anew and replaces the archived one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vla.action_heads.bac import SCHEDULE_FILE
from vla.checkpoint import TOKENIZER_DIR
from vla.provenance import blocking_reasons

RECORD_SUFFIXES = (".json", ".csv")
MAX_RECORD_BYTES = 2_000_000  # records are small; anything larger is a model or data file
# model artifacts, not records: checkpoints and the action tokenizer (their JSON belongs to the weights), and
# calibrated BAC schedules (only usable with the checkpoint they were calibrated on, which is not archived)
SKIP_DIRS = ("checkpoints", TOKENIZER_DIR)
SKIP_FILES = (SCHEDULE_FILE,)


def records(run: Path) -> list[Path]:
    """The record files of a run folder, relative to it, sorted."""
    found = []
    for path in run.rglob("*"):
        relative = path.relative_to(run)
        if (path.is_file() and path.suffix in RECORD_SUFFIXES and path.stat().st_size <= MAX_RECORD_BYTES
                and path.name not in SKIP_FILES and not any(part in SKIP_DIRS for part in relative.parts)):
            found.append(relative)
    return sorted(found)


def archive_run(run: Path, archive: Path) -> list[Path]:
    """Copy the records of a finished run (it has summary.json) into archive/<run name>, replacing what was
    there. Returns the files copied (relative)."""
    if not (run / "summary.json").exists():
        raise ValueError(f"{run} has no summary.json: only finished runs are archived")
    target = archive / run.name
    if target.exists():
        shutil.rmtree(target)
    copied = records(run)
    for relative in copied:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / relative, target / relative)
    return copied


def restore_run(run: Path, archive: Path, config, reuse_stale: bool = False) -> bool:
    """Copy an archived run's records into `run` when it has no summary.json yet and the archived run's
    provenance.json matches `config` at this checkout, or reuse_stale (as for a run folder made in this session,
    `heads_benchmark.check_run_origin`; the report names every commit). Files already in `run` are kept. True
    when restored."""
    source = archive / run.name
    if (run / "summary.json").exists() or not (source / "summary.json").exists():
        return False
    recorded = source / "provenance.json"
    reasons = blocking_reasons(json.loads(recorded.read_text()) if recorded.exists() else None, config, reuse_stale,
                               f"the archived run {source}")
    if reasons:
        print(f"not restoring the archived run {source}: {'; '.join(reasons)}; it is made anew (or pass "
              f"--reuse_stale=true)")
        return False
    for relative in records(source):
        if not (run / relative).exists():
            (run / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, run / relative)
    return True
