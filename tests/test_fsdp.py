"""FSDP2 for real on CPU: ``accelerate launch --config_file recipes/accelerate/fsdp.yaml`` with two
gloo processes shards the parameters, trains like one process with the same global batch, saves
one full model, resumes after SIGKILL, and never turns into DDP without saying so."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ONE_THREAD, REPO, hf_clm_command, recipe_args, run_hf_clm, run_launch, subprocess_env, write_corpus

from hf_clm.checkpoints import newest_complete_checkpoint

pytestmark = pytest.mark.full  # accelerate launches of two processes

PROBE = Path(__file__).parent / "helpers" / "training_probe.py"
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp.yaml"
# The GPU config adapted to CPU by flags: two processes, no bf16 (the README's CPU line).
CPU_FLAGS = ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0"]
# Within the first epoch (297 blocks of 32, 16 per step): the epoch's short last batch is topped up
# differently under 2 processes (accelerate's even_batches), as in the DDP test.
STEPS = ["--max_steps", "12", "--eval_steps", "6", "--save_steps", "6", "--logging_steps", "2"]


def env() -> dict[str, str]:
    return subprocess_env({**ONE_THREAD, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})


def accelerate_fsdp(*script_and_args: str, extra_flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), *CPU_FLAGS,
            *extra_flags, *script_and_args]


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = run_launch(command, env=env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def ranks(record_dir: Path, processes: int) -> list[dict]:
    return [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(processes)]


@pytest.fixture(scope="module")
def fsdp_and_single(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("fsdp")
    files = write_corpus(root)
    single = run([sys.executable, str(PROBE), str(root / "record-single"),
                  *recipe_args(files, root / "single", *STEPS, "--per_device_train_batch_size", "16")])
    fsdp = run(accelerate_fsdp(str(PROBE), str(root / "record-fsdp"),
                               *recipe_args(files, root / "fsdp", *STEPS, "--per_device_train_batch_size", "8")))
    return root, files, single, fsdp


def test_each_rank_holds_only_its_shard_of_the_parameters_while_training(fsdp_and_single):
    root, _, _, _ = fsdp_and_single
    (single,) = ranks(root / "record-single", 1)
    rank0, rank1 = ranks(root / "record-fsdp", 2)
    assert set(rank0["parameters"]) == set(rank1["parameters"]) == set(single["parameters"])
    for name, whole in single["parameters"].items():
        parts = [rank0["parameters"][name], rank1["parameters"][name]]
        assert all(p["dtensor"] and p["placements"] == ["S(0)"] for p in parts), name  # sharded on dim 0
        assert parts[0]["global"] == parts[1]["global"] == whole["global"], name
        # dim 0 split in two: each rank holds its half (the second may be shorter when dim 0 is odd)
        rows = whole["global"][0]
        assert parts[0]["local"][0] == -(-rows // 2) and parts[0]["local"][0] + parts[1]["local"][0] == rows, name
    held = [sum(torch.Size(p["local"]).numel() for p in r["parameters"].values()) for r in (rank0, rank1)]
    total = sum(torch.Size(p["global"]).numel() for p in single["parameters"].values())
    assert sum(held) == total and max(held) < 0.51 * total


def test_the_run_records_fsdp_and_the_log_says_so_first(fsdp_and_single):
    root, _, _, fsdp = fsdp_and_single
    record = json.loads((root / "fsdp" / "perplexity.json").read_text())["run"]
    assert record["parallelism"] == "fsdp" and record["fsdp_version"] == 2
    assert record["reshard_after_forward"] == "True" and record["processes"] == 2 and record["machines"] == 1
    assert record["backend"] == "gloo" and record["device_type"] == "cpu" and record["mixed_precision"] == "no"
    assert record["global_batch_blocks"] == 16 and record["global_batch_tokens"] == 16 * 32
    assert "DDP" not in fsdp.stderr and "find_unused_parameters" not in fsdp.stderr
    run_line = next(line for line in fsdp.stderr.splitlines() if "hf_clm.run_record: Run:" in line)
    assert "fsdp (fsdp_version 2, reshard_after_forward True" in run_line and "2 processes on 1 machine" in run_line
    assert "fsdp (fsdp_version 2" in (root / "fsdp" / "report.md").read_text()
    single = json.loads((root / "single" / "perplexity.json").read_text())["run"]
    assert single["parallelism"] == "none" and single["processes"] == 1 and single["global_batch_blocks"] == 16


def test_fsdp_loss_curve_matches_one_process_with_the_same_global_batch(fsdp_and_single):
    root, _, _, _ = fsdp_and_single
    single, fsdp = train_losses(root / "single"), train_losses(root / "fsdp")
    assert sorted(single) == sorted(fsdp) == [2, 4, 6, 8, 10, 12]
    for step in single:
        assert fsdp[step] == pytest.approx(single[step], abs=1e-5), step  # measured: within 2.4e-7
    assert single[12] < single[2]
    ppl = [json.loads((root / name / "perplexity.json").read_text())["perplexity"] for name in ("single", "fsdp")]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-5)


def test_fsdp_saves_one_full_model_that_from_pretrained_loads(fsdp_and_single):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root, _, _, _ = fsdp_and_single
    assert not list((root / "fsdp").glob("model-*.safetensors")) and not (root / "fsdp" / "pytorch_model_fsdp.bin").exists()
    saved = load_file(root / "fsdp" / "model.safetensors")
    reference = load_file(root / "single" / "model.safetensors")
    assert saved.keys() == reference.keys()
    for name, tensor in reference.items():
        assert saved[name].shape == tensor.shape, name
        torch.testing.assert_close(saved[name], tensor, atol=2e-4, rtol=0)
    model = AutoModelForCausalLM.from_pretrained(root / "fsdp")
    assert model.num_parameters() == json.loads((root / "fsdp" / "perplexity.json").read_text())["parameters"]


def test_perplexity_command_on_the_fsdp_model_matches_the_training_figure(fsdp_and_single):
    root, _, _, _ = fsdp_and_single
    result = run_hf_clm("perplexity", root / "fsdp", "--recipe", root / "fsdp" / "recipe.yaml", "--json",
                        env={**ONE_THREAD, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    trained = json.loads((root / "fsdp" / "perplexity.json").read_text())
    # Training scores the validation blocks; the command also scores the tail that did not fill a
    # block (fewer than block_size tokens), so the two differ by that tail only.
    assert 0 <= measured["tokens"] - trained["tokens"] < trained["block_size"]
    assert measured["perplexity"] == pytest.approx(trained["perplexity"], rel=0.01)


def kill_after_first_checkpoint(command: list[str], output_dir: Path) -> int:
    """SIGKILL the launcher and every worker at once, as on a lost machine (the workers run in
    sessions of their own, so the launcher's process group does not reach them)."""
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if output_dir.is_dir() and newest_complete_checkpoint(output_dir):
            tree = [process, *psutil.Process(process.pid).children(recursive=True)]
            for member in tree:
                member.send_signal(signal.SIGKILL)
            psutil.wait_procs(tree[1:], timeout=30)
            break
        time.sleep(0.01)
    return process.wait()


def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    files = write_corpus(tmp_path)
    flags = ("--max_steps", "50", "--save_steps", "10", "--logging_steps", "5", "--eval_steps", "50",
             "--save_total_limit", "3")

    def command(output_dir: Path, *extra: str) -> list[str]:
        return accelerate_fsdp("-m", "hf_clm", "train", *recipe_args(files, output_dir, *flags, *extra))

    run(command(tmp_path / "whole"))
    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(command(killed), killed) == -signal.SIGKILL, \
        "the run ended before it could be killed; raise max_steps"
    step = int(newest_complete_checkpoint(killed).name.split("-")[1])
    assert 0 < step < 50 and not (killed / "model.safetensors").exists() and not (killed / "checkpoint-50").exists()
    resumed = run(command(killed, "--resume_from_checkpoint", "auto"))
    assert f"checkpoint-{step}" in " ".join(re.findall(r"Resuming from \S+", resumed.stderr)), re.findall(r"Resuming from \S+", resumed.stderr)
    assert (killed / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    expected = {s: loss for s, loss in train_losses(tmp_path / "whole").items() if s > step}
    assert {s: loss for s, loss in train_losses(killed).items() if s > step} == expected
    assert len(expected) == (50 - step) // 5


def test_a_launch_that_asks_for_sharding_gets_it_or_fails_in_one_line(tmp_path, text_files):
    """Each case asks for FSDP where accelerate would set up something else: a one-line error, exit 2."""
    train = ["-m", "hf_clm", "train"]
    cases = {
        "fsdp 1 on cpu": (accelerate_fsdp(*train, *recipe_args(text_files, tmp_path / "v1"),
                                          extra_flags=("--fsdp_version", "1")), "FSDP on CPU needs FSDP2"),
        "recipe fsdp without a launcher": (hf_clm_command("train", *recipe_args(text_files, tmp_path / "plain"),
                                                          "--fsdp", "full_shard"), "FSDP needs a distributed launch"),
    }
    for name, (command, message) in cases.items():
        result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=600)
        errors = [line for line in result.stderr.splitlines() if line.startswith("hf-clm: error:")]
        assert result.returncode != 0 and len(errors) >= 1 and message in errors[0], (name, result.stderr[-2000:])
        assert not (tmp_path / name).exists()
