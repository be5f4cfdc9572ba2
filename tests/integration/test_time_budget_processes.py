"""max_train_seconds: training ends by the clock and the schedule follows the clock."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_args, run_launch
from support.time_budget import budget_run

PROBE = Path(__file__).parent.parent / "helpers" / "training_probe.py"

HELD_BACK = 3.0  # seconds rank 1's clock starts after rank 0's


def test_a_resumed_run_continues_the_same_budget(tmp_path, text_files):
    whole = budget_run(text_files, tmp_path / "whole", "4", "--save_steps", "5")
    checkpoint = sorted((tmp_path / "whole").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    spent = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["ThroughputMeter"]
    spent = (spent[-1] if isinstance(spent, list) else spent)["attributes"]["train_seconds"]
    step_mean = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["BudgetStop"]
    assert 0 < (step_mean[-1] if isinstance(step_mean, list) else step_mean)["attributes"]["step_mean"] < spent
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = budget_run(text_files, tmp_path / "resumed", "4", "--save_steps", "5",
                         "--resume_from_checkpoint", "auto")
    # the time before the resume counts: the two halves together keep one budget (a step's noise aside)
    assert spent < resumed["train_seconds"] <= 4 * 1.25 and whole["train_seconds"] <= 4 * 1.25


def test_two_processes_whose_clocks_disagree_stop_after_the_same_step_at_the_same_rates(tmp_path, text_files):
    """Rank 1 starts its clock late, so its own clock reads HELD_BACK seconds less than rank 0's: were
    each process to decide alone, rank 0 would stop first and rank 1 wait forever in the next all-reduce."""
    flags = recipe_args(text_files, tmp_path / "run", "--max_steps", "-1", "--max_train_seconds", "8",
                        "--lr_scheduler_type", "cosine", "--warmup_steps", "0.1", "--logging_steps", "1",
                        "--eval_steps", "100000", "--save_steps", "100000")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PROBE),
               str(tmp_path / "record"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_HOLD_BACK_SECONDS": str(HELD_BACK)}
    try:
        result = run_launch(command, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the launch hung: one process stopped while the other took another step")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1))
    steps = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"]
    assert len(rank0["learning_rates"]) == len(rank1["learning_rates"]) == steps > 5
    assert rank0["learning_rates"] == rank1["learning_rates"]  # every step, exactly
    assert rank0["weights"] == rank1["weights"]
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["train_seconds"] <= 8 * 1.25  # rank 0's clock, the one that decides
    assert rank0["learning_rates"][-1] < 0.05 * max(rank0["learning_rates"])
