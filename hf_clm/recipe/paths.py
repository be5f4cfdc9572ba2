"""Paths in a recipe: every key naming a local file or folder resolved once, at parse time, from the
current directory (not from the recipe file's folder), and a relative path that names nothing refused
with the absolute path that was tried."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from hf_clm.errors import HfClmError
from hf_clm.recipe.mixture import resolved_mixture
from hf_clm.recipe.schema import PATH_KEYS, PATH_OR_HUB_KEYS

NOT_A_PATH = {"auto"}  # resume_from_checkpoint: auto


def looks_local(value: str) -> bool:
    """A path rather than a Hub id: written as one, or naming something that exists here (the
    rule ``from_pretrained`` and ``load_dataset`` follow: an existing local folder wins)."""
    return value.startswith(("~", "/", "./", "../")) or value in (".", "..") or Path(value).expanduser().exists()


def absolute_path(value: str) -> str:
    """``~`` expanded, then relative to the current directory; globs kept (``*.txt`` stays a glob)."""
    return str(Path(os.path.abspath(os.path.expanduser(value))))


def resolve_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Every path key resolved once, the same way, at parse time: ``~`` expanded and relative
    paths taken from the current directory, made absolute. The saved ``recipe.yaml`` therefore
    holds absolute paths and repeats the run from any directory."""
    values = dict(values)
    for key in PATH_KEYS + PATH_OR_HUB_KEYS:
        value = values.get(key)
        if isinstance(value, (list, tuple)):
            values[key] = [absolute_path(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str) and value and value not in NOT_A_PATH and not value.lstrip().startswith("{") \
                and (key in PATH_KEYS or looks_local(value)):
            values[key] = absolute_path(value)
    if values.get("mixture") is not None:
        values["mixture"] = resolved_mixture(values["mixture"], absolute_path)
    return values


# Path keys whose file or folder must exist before a run starts (the others are written, or may name a Hub id).
EXISTING_PATH_KEYS = ("train_files", "validation_files", "resume_from_checkpoint", "deepspeed", "fsdp_config")


def from_current_directory(value: str) -> str:
    """For a relative path: that it was taken from the current directory, and the absolute path tried."""
    if os.path.isabs(os.path.expanduser(value)):
        return ""
    return f" (a relative path is resolved from the current directory, {os.getcwd()}: {absolute_path(value)})"


def check_relative_paths(values: dict[str, Any]) -> None:
    """A relative path that names nothing, refused naming where it was looked for (the current
    directory, not the recipe file's folder) and the absolute path tried."""
    for key in EXISTING_PATH_KEYS:
        given = values.get(key)
        for value in given if isinstance(given, list) else [given]:
            if isinstance(value, str) and value and value not in NOT_A_PATH and not value.lstrip().startswith("{") \
                    and not os.path.isabs(os.path.expanduser(value)) and not glob.glob(absolute_path(value)):
                raise HfClmError(f"{key}: '{value}' does not exist{from_current_directory(value)}; give a path "
                                 f"from the current directory or an absolute one")
