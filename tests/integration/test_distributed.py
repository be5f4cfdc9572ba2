"""Two CPU processes (torchrun, gloo) against one: the same training, split across ranks."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import recipe_args, run_launch, train_losses, write_corpus

pytestmark = pytest.mark.full  # torchrun and accelerate launches of two processes

PROBE = Path(__file__).parent.parent / "helpers" / "training_probe.py"


def launch(processes: int, record_dir: Path, flags: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(PROBE), str(record_dir), *flags]
    result = run_launch(command, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(record_dir: Path, processes: int) -> list[dict]:
    return [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(processes)]


def as_rows(batches: list) -> list[tuple[int, ...]]:
    return [tuple(row) for batch in batches for row in batch]


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("ddp")
    files = write_corpus(root)
    # 12 steps x 16 blocks stay inside the first epoch (297 blocks): its last, short batch is padded
    # differently under 2 processes (accelerate's even_batches repeats blocks from the epoch start).
    common = ["--max_steps", "12", "--eval_steps", "6", "--save_steps", "6", "--logging_steps", "2"]
    single = recipe_args(files, root / "single", *common, "--per_device_train_batch_size", "16")
    double = recipe_args(files, root / "double", *common, "--per_device_train_batch_size", "8")
    launch(1, root / "record-single", single)
    launch(2, root / "record-double", double)
    return root, records(root / "record-single", 1), records(root / "record-double", 2)


def test_two_ranks_end_with_identical_weights(one_and_two_processes):
    _, _, (rank0, rank1) = one_and_two_processes
    assert rank0["weights"] == rank1["weights"]


def test_ranks_see_different_blocks_that_together_make_the_single_process_batch(one_and_two_processes):
    _, (single,), (rank0, rank1) = one_and_two_processes
    assert len(rank0["batches"]) == len(rank1["batches"]) == len(single["batches"]) == 12
    for step, (part0, part1, whole) in enumerate(zip(rank0["batches"], rank1["batches"], single["batches"])):
        assert len(part0) == len(part1) == 8 and len(whole) == 16
        assert not set(map(tuple, part0)) & set(map(tuple, part1)), f"step {step}: ranks shared a block"
        assert Counter(map(tuple, part0 + part1)) == Counter(map(tuple, whole)), f"step {step}"


def test_two_process_loss_curve_matches_one_process_with_the_same_global_batch(one_and_two_processes):
    root, _, _ = one_and_two_processes
    single, double = train_losses(root / "single"), train_losses(root / "double")
    assert len(single) == len(double) == 6
    assert double == pytest.approx(single, abs=1e-4)
    assert single[-1] < single[0]
    ppl = [json.loads((root / name / "perplexity.json").read_text())["perplexity"] for name in ("single", "double")]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-3)


def test_only_rank_zero_writes_the_run(one_and_two_processes):
    root, _, _ = one_and_two_processes
    state = json.loads((root / "double" / "trainer_state.json").read_text())
    assert state["log_history"][-1]["num_input_tokens_seen"] == 12 * 16 * 32  # both ranks' tokens
    assert sorted(p.name for p in (root / "double").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    # each rank saves its own RNG state in a checkpoint; everything else comes from rank 0 alone
    assert sorted(p.name for p in (root / "double" / "checkpoint-6").glob("rng_state*")) == \
        ["rng_state_0.pth", "rng_state_1.pth"]
    logged = json.loads((root / "double" / "perplexity.json").read_text())
    assert logged["train_tokens_per_second"] > 0


@pytest.fixture(scope="module")
def streamed_runs(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("streaming")
    files = write_corpus(root, train_documents=240)
    common = ["--streaming", "true", "--shuffle_buffer_size", "64", "--max_steps", "16", "--eval_steps", "8",
              "--save_steps", "8", "--logging_steps", "2"]
    launch(1, root / "record-one", recipe_args(files, root / "one", *common))
    launch(2, root / "record-two", recipe_args(files, root / "two", *common))
    return root, records(root / "record-one", 1), records(root / "record-two", 2)


def test_streaming_trains_on_one_process(streamed_runs):
    root, (single,), _ = streamed_runs
    summary = json.loads((root / "one" / "perplexity.json").read_text())
    assert summary["unigram_perplexity"] is None  # a stream is never counted whole
    assert summary["train_tokens_seen"] == 16 * 8 * 32
    losses = train_losses(root / "one")
    assert losses[-1] < losses[0] - 0.5
    assert len(single["batches"]) == 16 and all(len(batch) == 8 for batch in single["batches"])
    counts = json.loads((root / "one" / "token_counts.json").read_text())
    assert set(counts) == {"validation"}


def test_streaming_splits_the_stream_across_two_processes(streamed_runs):
    root, _, (rank0, rank1) = streamed_runs
    assert rank0["weights"] == rank1["weights"]
    rows0, rows1 = set(as_rows(rank0["batches"])), set(as_rows(rank1["batches"]))
    assert rows0 and rows1 and not rows0 & rows1
    assert json.loads((root / "two" / "perplexity.json").read_text())["train_tokens_seen"] == 2 * 16 * 8 * 32


def test_accelerate_launch_with_the_shipped_cpu_config_runs_two_processes(tmp_path, text_files):
    from conftest import REPO

    config = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", "0", "-m", "hf_clm", "train",
               *recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_steps", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["train_tokens_seen"] == 2 * 4 * 8 * 32
    # the package default: GPT-style models use every parameter, so DDP does not search for unused ones
    assert summary["run"]["parallelism"] == "ddp" and summary["run"]["find_unused_parameters"] is False
    assert summary["run"]["processes"] == 2 and summary["run"]["global_batch_tokens"] == 2 * 8 * 32
    assert "find_unused_parameters=True" not in result.stderr
    assert "ddp (find_unused_parameters False), 2 processes on 1 machine" in result.stderr


def test_workers_end_when_their_launcher_is_killed(tmp_path, text_files):
    """torchrun starts its workers in sessions of their own: a kill -9 of the launcher's process group
    must not leave them training."""
    import signal
    import time

    from conftest import REPO

    config = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
    run_dir = tmp_path / "orphans"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", "0", "-m", "hf_clm", "train",
               *recipe_args(text_files, run_dir, "--max_steps", "100000", "--save_steps", "2", "--eval_steps", "1000")]
    launcher = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(run_dir.glob("checkpoint-*")):  # both workers are training
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        workers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                   if pid != launcher.pid and str(run_dir).encode() in proc_cmdline(pid)]
        assert len(workers) == 2, workers
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers)


def proc_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (its parent, gone, will not reap it)


def test_a_user_error_under_a_launcher_is_printed_once_and_the_other_rank_logs_no_info(tmp_path, text_files):
    from conftest import REPO

    config = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", "0", "-m", "hf_clm", "train",
               *recipe_args(text_files, tmp_path / "run", "--block_size", "100000")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("hf-clm: error: ")] == [
        "hf-clm: error: the train split has 9535 tokens, fewer than one block of 100000; lower block_size or add text"]
    counts = [line for line in lines if " INFO hf_clm.data.blocks: train: " in line]
    assert len(counts) == 1, counts  # rank 1 does not repeat rank 0's lines
