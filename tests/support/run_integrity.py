"""Shared by tests/unit/test_run_integrity.py and tests/integration/test_run_integrity_processes.py."""

import shutil
from pathlib import Path

from conftest import recipe_args


def train_args(files, run_dir: Path, *extra: str) -> list[str]:
    return ["train", *recipe_args(files, run_dir, "--max_steps", "4", "--save_steps", "2", "--eval_steps", "4",
                                  *extra)]


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path
