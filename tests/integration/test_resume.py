"""A run killed with SIGKILL after a checkpoint resumes to exactly the uninterrupted result."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD, hf_clm_command, recipe_args, run_hf_clm, subprocess_env, write_corpus

from hf_clm.training.checkpoints import is_complete_checkpoint, newest_complete_checkpoint

pytestmark = pytest.mark.full  # real processes, one of them killed

STEPS = 300
FLAGS = ("--max_steps", str(STEPS), "--save_steps", "20", "--logging_steps", "5", "--eval_steps", str(STEPS),
         "--save_total_limit", "3")


def train_args(text_files, output_dir: Path, *extra: str) -> list[str]:
    return ["train", *recipe_args(text_files, output_dir, *FLAGS, *extra)]


def logged_losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def kill_after_first_checkpoint(command: list[str], output_dir: Path) -> int:
    process = subprocess.Popen(command, env=subprocess_env(ONE_THREAD), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if newest_complete_checkpoint(output_dir) if output_dir.is_dir() else None:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    return process.wait()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("resume")
    files = write_corpus(root)
    whole = run_hf_clm(*train_args(files, root / "whole"), env=ONE_THREAD)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_dir = root / "killed"
    code = kill_after_first_checkpoint(hf_clm_command(*train_args(files, killed_dir)), killed_dir)
    assert code == -signal.SIGKILL, "the run ended before it could be killed; raise STEPS"
    resumed_from = newest_complete_checkpoint(killed_dir)
    # what a kill during a save leaves: a later checkpoint folder with weights but no trainer state
    step = int(resumed_from.name.split("-")[1])
    torn = killed_dir / f"checkpoint-{step + 20}"
    shutil.rmtree(torn, ignore_errors=True)
    shutil.copytree(resumed_from, torn)
    (torn / "trainer_state.json").unlink()
    assert not is_complete_checkpoint(torn)

    resumed = run_hf_clm(*train_args(files, killed_dir, "--resume_from_checkpoint", "auto"), env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return root / "whole", killed_dir, step, resumed.stderr


def test_resume_skips_the_incomplete_checkpoint(killed_and_resumed):
    _, _, step, log = killed_and_resumed
    assert f"checkpoint-{step + 20}: an incomplete checkpoint" in log
    assert "Resuming from" in log and f"checkpoint-{step}" in log


def test_resumed_run_ends_with_bit_identical_weights(killed_and_resumed):
    whole, killed, step, _ = killed_and_resumed
    assert 0 < step < STEPS
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_losses_after_the_resume_point_equal_the_uninterrupted_run(killed_and_resumed):
    whole, killed, step, _ = killed_and_resumed
    expected = {s: loss for s, loss in logged_losses(whole).items() if s > step}
    got = {s: loss for s, loss in logged_losses(killed).items() if s > step}
    assert len(expected) == (STEPS - step) // 5
    assert got == expected  # exact: same floats, not approximately
    summaries = [json.loads((d / "perplexity.json").read_text()) for d in (whole, killed)]
    assert summaries[0]["perplexity"] == summaries[1]["perplexity"]
    assert summaries[1]["train_tokens_seen"] == summaries[0]["train_tokens_seen"]
