"""hf-clm prepare as a datatrove pipeline: local, Ray and Slurm executors give the blocks of the
hand-run shards; a killed pipeline reruns only its unfinished tasks; prepare imports no torch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import hf_clm_command, recipe_args, run_in_process, subprocess_env, write_corpus
from datasets import load_from_disk

pytestmark = pytest.mark.full
TASKS = 3
BLOCK = 32


def prepare_argv(files, target, *extra):
    return [*recipe_args(files, target.parent / "unused", "--max_steps", "10"), "--prepared_dataset", str(target),
            *extra]


def flat(folder: Path) -> list[int]:
    return [token for row in load_from_disk(str(folder))["input_ids"] for token in row]


def shard_tokens(target: Path, tasks: int = TASKS, split: str = "train") -> list[list[int]]:
    return [flat(target / f"{split}-{i:05d}-of-{tasks:05d}") for i in range(tasks)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline_hf_cache):
    """The corpus prepared on one machine, and by the local executor in three tasks."""
    root = tmp_path_factory.mktemp("pipeline")
    files = write_corpus(root / "corpus", train_documents=240)
    one = root / "one"
    assert run_in_process("prepare", *prepare_argv(files, one)).returncode == 0
    three = root / "three"
    result = run_in_process("prepare", *prepare_argv(files, three, "--executor", "local", "--tasks", str(TASKS),
                                                     "--workers", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, files, one, three


def test_local_tasks_are_the_one_machine_blocks_less_each_tasks_tail(prepared):
    """Task I's blocks are the one-machine token stream over task I's documents, cut into blocks
    from the task's first token: what differs from one preparation is each task's last partial
    block (fewer than block_size tokens), dropped instead of carried into the next task."""
    _, _, one, three = prepared
    descriptions = [json.loads((three / f"shard-{i:05d}-of-{TASKS:05d}.json").read_text()) for i in range(TASKS)]
    for split in ("train", "validation"):  # each task reads its byte range of both files
        whole = flat(one / split)
        tokens = [d["counts"][split]["tokens"] for d in descriptions]
        assert sum(tokens) == json.loads((one / "prepared.json").read_text())["counts"][split]["tokens"]
        start = 0
        for i, shard in enumerate(shard_tokens(three, split=split)):
            kept = tokens[i] - tokens[i] % BLOCK
            assert len(shard) == kept
            expected = whole[start:start + kept]
            assert shard[:len(expected)] == expected, f"task {i}, {split}"
            start += tokens[i]
        assert any(t % BLOCK for t in tokens[:-1])  # the case worth testing: a task ends in a partial block
    assert sorted(p.name for p in (three / ".pipeline" / "completions").iterdir()) == ["00000", "00001", "00002"]


def test_rerun_skips_finished_tasks(prepared):
    root, files, _, three = prepared
    before = {p: p.stat().st_mtime_ns for p in three.glob("shard-*.json")}
    result = run_in_process("prepare", *prepare_argv(files, three, "--tasks", str(TASKS)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in three.glob("shard-*.json")} == before


def test_a_killed_pipeline_reruns_only_its_unfinished_task(prepared, tmp_path):
    """SIGKILL while task 2 runs (tasks 0 and 1 finished): the rerun runs task 2 alone, and the
    folder equals the uninterrupted one."""
    root, files, _, three = prepared
    target = tmp_path / "killed"
    argv = hf_clm_command("prepare", *prepare_argv(files, target, "--tasks", str(TASKS), "--workers", "1"))
    env = subprocess_env({"HF_HOME": os.environ["HF_HOME"], "HF_DATASETS_CACHE": os.environ["HF_DATASETS_CACHE"],
                          "HF_HUB_OFFLINE": "1"})
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    completions = target / ".pipeline" / "completions"
    deadline = time.time() + 300
    while not (completions / "00001").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (completions / "00001").exists() and not (completions / "00002").exists(), "killed too late"
    assert not (target / f"shard-00002-of-{TASKS:05d}.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in [*target.glob("shard-*.json"), *target.glob(".pipeline/logs/*")]}
    result = run_in_process("prepare", *prepare_argv(files, target, "--tasks", str(TASKS), "--workers", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # tasks 0 and 1 not run again (nor logged)
    assert (completions / "00002").exists()
    assert shard_tokens(target) == shard_tokens(three)
    assert shard_tokens(target, split="validation") == shard_tokens(three, split="validation")


def test_ray_executor_gives_the_local_blocks(prepared, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray package is not installed (pip install 'hf-clm[ray]')")
    _, files, _, three = prepared
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_in_process("prepare", *prepare_argv(files, tmp_path / "ray", "--executor", "ray",
                                                         "--tasks", str(TASKS)))
    finally:
        ray.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_tokens(tmp_path / "ray") == shard_tokens(three)
    assert shard_tokens(tmp_path / "ray", split="validation") == shard_tokens(three, split="validation")


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no sbatch on PATH: no Slurm here (.ci/slurm-up starts "
                                                           "a one-host Slurm)")


def test_slurm_executor_gives_the_local_blocks(prepared, tmp_path):
    """One host is one Slurm node: the job array's tasks run side by side on it, standing in for nodes."""
    _, files, _, three = prepared
    target = tmp_path / "slurm"
    result = run_in_process("prepare", *prepare_argv(files, target, "--executor", "slurm", "--tasks", str(TASKS)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Slurm job" in result.stdout
    deadline = time.time() + 600
    while len(list((target / ".pipeline" / "completions").glob("0000*"))) < TASKS and time.time() < deadline:
        time.sleep(1)
    assert shard_tokens(target) == shard_tokens(three)
    assert shard_tokens(target, split="validation") == shard_tokens(three, split="validation")


def test_prepare_imports_neither_torch_nor_trainer(prepared, tmp_path):
    _, files, _, _ = prepared
    argv = ["prepare", *prepare_argv(files, tmp_path / "plain")]
    code = ("import sys; from hf_clm.commands.cli import main; assert main(%r) == 0; "
            "loaded = [m for m in ('torch', 'transformers.trainer', 'peft', 'accelerate') if m in sys.modules]; "
            "assert not loaded, loaded" % argv)
    env = subprocess_env({"HF_HOME": os.environ["HF_HOME"], "HF_DATASETS_CACHE": os.environ["HF_DATASETS_CACHE"],
                          "HF_HUB_OFFLINE": "1"})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "plain" / "prepared.json").is_file()
