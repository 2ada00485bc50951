"""Writing files so that a crash leaves either the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomically(path: str | os.PathLike, data, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (sorted keys) to ``path`` through a temporary file renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=True) + "\n")
    os.replace(tmp, path)
