"""Artifacts: the files a run writes, each complete or absent (written to a temporary name, then renamed)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# The finished-run marker: a run directory holding it is a finished run.
PERPLEXITY_FILENAME = "perplexity.json"


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    return write_text_atomic(json.dumps(data, indent=2) + "\n", path)
