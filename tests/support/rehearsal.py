"""Shared by tests/unit/test_rehearsal.py and tests/integration/test_rehearsal_processes.py."""

from pathlib import Path

import yaml
from conftest import recipe_args, write_corpus


def small_recipe(tmp_path, **changes) -> Path:
    """The tests' seconds-long run as a recipe file (its max_steps is the real run's, 30)."""
    files = write_corpus(tmp_path / "corpus")
    flags = recipe_args(files, tmp_path / "out")
    values = {flag[2:]: value for flag, value in zip(flags[::2], flags[1::2])}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**values, **changes}), encoding="utf-8")
    return path
