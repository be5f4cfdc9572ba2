"""The benchmark runs end to end on tiny inputs (it measures nothing meaningful at this size)."""

import json

import pytest
from conftest import REPO, requires_shared_data, run_python_module


@requires_shared_data
def test_bench_quick_runs_and_writes_its_table(tmp_path):
    output = tmp_path / "bench.json"
    result = run_python_module("bench", "--quick", "--only", "data", "ddp", "checkpoint", "eval", "--output", output,
                               cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    stages = {row["stage"] for row in rows}
    assert {"prepare memory", "evaluate", "train 2-process DDP (CPU, gloo)",
            "checkpoint save, 2-process FSDP2 (CPU, gloo)"} <= stages
    assert any(stage.endswith("whole process") for stage in stages)  # hf-clm prepare vs the run_clm.py way
    assert all(row["ratio"] is None or row["ratio"] > 0 for row in rows)
    assert "| stage | comparison | ratio |" in result.stdout


@requires_shared_data
def test_bench_processes_rows_run_two_processes_and_agree(tmp_path):
    output = tmp_path / "bench.json"
    result = run_python_module("bench", "--quick", "--only", "processes", "--output", output, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    perplexity, broadcast = json.loads(output.read_text())["rows"]
    assert perplexity["stage"] == "perplexity, 2 CPU processes" and perplexity["met"] is True  # figures equal
    assert perplexity["ratio"] > 0
    assert broadcast["stage"] == "max_train_seconds, 2 CPU processes" and " µs per optimizer step" in broadcast["context"]


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for real")
    result = run_python_module("bench", "--gpu", cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("GPU check: not run:") and len(result.stdout.strip().splitlines()) == 1
    assert "CPU build" in result.stdout or "no CUDA GPU is visible" in result.stdout


@pytest.mark.slow
def test_bench_ab_runs_every_switch_alone_against_the_baseline(tmp_path):
    output = tmp_path / "ab.json"
    result = run_python_module("bench", "--quick", "--only", "ab", "--ab_recipes", "default", "--ab_steps", "6",
                               "--output", output, cwd=REPO, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    names = [row["what"] for row in rows]
    assert names[:5] == ["baseline (every switch off)", "+ document attention", "+ muon", "+ warmup-stable-decay",
                         "+ bf16 autocast"]  # torch_compile changes speed only: not in an equal-steps A/B
    assert all(row["steps"] == 6 and 0 < row["bits_per_char"] < 16 for row in rows)
    assert "| A/B default | + muon |" in result.stdout


@requires_shared_data


# train runs six Trainers (minutes on 2 busy cores): with the slow tests; data, ddp and checkpoint run above
@pytest.mark.parametrize("stage_name", ["eval", pytest.param("train", marks=pytest.mark.slow)])
def test_a_stage_module_gives_rows(stage_name, tmp_path):
    from bench.__main__ import STAGES
    from bench.rows import Row

    stage = next(stage for stage in STAGES if stage.name == stage_name)
    rows = stage.module.rows(True, tmp_path)
    assert rows and all(isinstance(row, Row) for row in rows)
    assert all(row.ratio is None or row.ratio > 0 for row in rows)
    judged = [row for row in rows if row.target is not None and row.ratio is not None]
    assert judged and all(isinstance(row.met, bool) for row in judged)
