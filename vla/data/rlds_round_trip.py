"""A LeRobot dataset passed through RLDS and back: exported as RLDS shards in an Open-X layout
(`vla-data export-rlds`), then read by the TF-free RLDS reader into a LeRobot dataset (`vla-data convert-rlds`).

No Open-X data can be downloaded here, so the cross-embodiment mixture run (vla.eval.mixture_benchmark) trains one of
its robots on what the RLDS path read from simulator demos written in a real Open-X layout: the RLDS reader and
converter are then part of what the measured policy depends on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vla.data.convert_rlds import ENTRY_FILE, ConvertRLDSConfig, convert
from vla.data.export_rlds import ExportRLDSConfig, export
from vla.data.registry import load_embodiment

DONE_FILE = "rlds_round_trip.done"


def through_rlds(root: str | Path, repo_id: str, source_entry: str, rlds_entry: str,
                 shards: int = 4) -> tuple[Path, Path]:
    """Export the LeRobot dataset at `root` (read with registry entry `source_entry`) as RLDS in `rlds_entry`'s layout
    into <root>-rlds/rlds, convert that into the LeRobot dataset <root>-rlds/lerobot under the source's embodiment
    name (so the simulator's tasks of that robot evaluate it). Returns (converted root, its registry entry file).
    Reused when a previous call completed (the source folder is content-addressed by vla-demos)."""
    root = Path(root)
    folder = root.with_name(f"{root.name}-rlds")
    converted = folder / "lerobot"
    if (folder / DONE_FILE).exists():
        return converted, converted / ENTRY_FILE
    shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted call
    rlds_dir = export(ExportRLDSConfig(root=str(root), repo_id=repo_id, source_embodiment=source_entry,
                                       embodiment_config=rlds_entry, output_root=str(folder / "rlds"), shards=shards))
    convert(ConvertRLDSConfig(rlds_dir=str(rlds_dir), embodiment_config=rlds_entry, output_root=str(converted),
                              repo_id=f"{repo_id}_rlds", embodiment_name=load_embodiment(source_entry).name))
    (folder / DONE_FILE).write_text(f"{rlds_dir}\n")
    return converted, converted / ENTRY_FILE
