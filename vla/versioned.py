"""JSON metadata files that carry a `format_version` (action tokenizers, latent action models, latent-action labels):
read one, refusing a version this code does not read."""

from __future__ import annotations

import json
from pathlib import Path


def read_versioned_json(path: Path, version: int) -> dict:
    """The JSON object at `path`; a ValueError naming the file unless its format_version is `version`."""
    meta = json.loads(Path(path).read_text())
    if meta.get("format_version") != version:
        raise ValueError(f"{path} has format_version {meta.get('format_version')}; this code reads version {version}")
    return meta
