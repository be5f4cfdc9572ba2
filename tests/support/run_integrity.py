"""Shared by tests/unit/test_run_integrity.py and tests/integration/test_run_integrity_processes.py."""

import shutil
from pathlib import Path

import pytest
from conftest import recipe_args


def train_args(files, run_dir: Path, *extra: str) -> list[str]:
    return ["train", *recipe_args(files, run_dir, "--max_steps", "4", "--save_steps", "2", "--eval_steps", "4",
                                  *extra)]


@pytest.fixture
def train(hf_clm_main):
    """A 4-step training (checkpoints at 2 and 4) in process: train(files, run_dir, *extra)."""
    return lambda files, run_dir, *extra, **kwargs: hf_clm_main(*train_args(files, run_dir, *extra), **kwargs)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def corpus(finished_run):
    return finished_run.files


@pytest.fixture(scope="module")
def finished(finished_run):
    """A finished 4-step run (checkpoints 2 and 4) trained on ``corpus``; tests change only copies of it."""
    return finished_run.run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path
