"""FSDP2 for real on CPU: ``accelerate launch --config_file recipes/accelerate/fsdp.yaml`` with two
gloo processes shards the parameters, trains like one process with the same global batch, saves
one full model, resumes after SIGKILL, and never turns into DDP without saying so."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ONE_THREAD, REPO, hf_clm_command, recipe_args, run_hf_clm, run_launch, subprocess_env, write_corpus

from hf_clm.training.checkpoints import checkpoint_problem, newest_complete_checkpoint

pytestmark = pytest.mark.full  # accelerate launches of two processes

PROBE = Path(__file__).parent.parent / "helpers" / "training_probe.py"
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp.yaml"
# The GPU config adapted to CPU by flags: two processes, no bf16 (the CPU line of docs/distributed.md).
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
    run_line = next(line for line in fsdp.stderr.splitlines() if "hf_clm.training.record: Run:" in line)
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


FORMS = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")  # fsdp_state_dict_type: how checkpoints are saved
OTHER_FORM = dict(zip(FORMS, reversed(FORMS)))


def saved_in_form(checkpoint: Path, form: str, processes: int = 2) -> bool:
    """Full: the gathered weights and optimizer state in one file each. Sharded: torch.distributed.checkpoint
    folders, in which each rank wrote its own part, and no full copy of either."""
    if form == "FULL_STATE_DICT":
        return (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    parts = {f"__{rank}_0.distcp" for rank in range(processes)} | {".metadata"}
    return all({p.name for p in (checkpoint / folder).iterdir()} == parts
               for folder in ("pytorch_model_fsdp_0", "optimizer_0")) \
        and not [p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin") and p.name != "training_args.bin"]


# What a checkpoint lacks when cut short, or copied without its dot files (cp dir/*): the sharded
# weights' .metadata; a kill during a full save: the trainer state, written last.
TORN_PART = {"FULL_STATE_DICT": "trainer_state.json", "SHARDED_STATE_DICT": "pytorch_model_fsdp_0/.metadata"}


@pytest.mark.parametrize("form", FORMS)
def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, form):
    """Whichever form the checkpoints take, and whichever form the resuming launch saves in."""
    files = write_corpus(tmp_path)
    flags = ("--max_steps", "50", "--save_steps", "10", "--logging_steps", "5", "--eval_steps", "50",
             "--save_total_limit", "3")

    def command(output_dir: Path, *extra: str, saves: str = form) -> list[str]:
        return accelerate_fsdp("-m", "hf_clm", "train", *recipe_args(files, output_dir, *flags, *extra),
                               extra_flags=("--fsdp_state_dict_type", saves))

    run(command(tmp_path / "whole"))
    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(command(killed), killed) == -signal.SIGKILL, \
        "the run ended before it could be killed; raise max_steps"
    checkpoint = newest_complete_checkpoint(killed)
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 50 and not (killed / "model.safetensors").exists() and not (killed / "checkpoint-50").exists()
    assert saved_in_form(checkpoint, form)
    torn = killed / f"checkpoint-{step + 10}"
    shutil.rmtree(torn, ignore_errors=True)
    shutil.copytree(checkpoint, torn)
    (torn / TORN_PART[form]).unlink()
    torn_problem = checkpoint_problem(torn)
    other = Path(shutil.copytree(killed, tmp_path / "resumed-by-the-other-form"))

    resumed = run(command(killed, "--resume_from_checkpoint", "auto"))
    assert f"checkpoint-{step}" in " ".join(re.findall(r"Resuming from \S+", resumed.stderr)), re.findall(r"Resuming from \S+", resumed.stderr)
    assert f"checkpoint-{step + 10}: an incomplete checkpoint ({torn_problem};" in resumed.stderr
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (killed / "model.safetensors").read_bytes() == whole
    expected = {s: loss for s, loss in train_losses(tmp_path / "whole").items() if s > step}
    assert {s: loss for s, loss in train_losses(killed).items() if s > step} == expected
    assert len(expected) == (50 - step) // 5
    assert saved_in_form(killed / "checkpoint-50", form)

    run(command(other, "--resume_from_checkpoint", "auto", saves=OTHER_FORM[form]))
    assert (other / "model.safetensors").read_bytes() == whole
    assert saved_in_form(other / "checkpoint-50", OTHER_FORM[form])


def sharded_command(files: dict[str, Path], output_dir: Path, processes: int, *extra: str) -> list[str]:
    """A launch saving sharded checkpoints, with the global batch of 16 blocks on any number of processes."""
    return accelerate_fsdp("-m", "hf_clm", "train",
                           *recipe_args(files, output_dir, *STEPS, "--per_device_train_batch_size",
                                        str(16 // processes), *extra),
                           extra_flags=("--fsdp_state_dict_type", "SHARDED_STATE_DICT",
                                        "--num_processes", str(processes)))


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, offline_hf_cache):
    """One two-process run saving sharded checkpoints (steps 6 and 12)."""
    root = tmp_path_factory.mktemp("sharded")
    files = write_corpus(root)
    run(sharded_command(files, root / "two", 2))
    return root, files, root / "two"


def test_sharded_checkpoints_end_in_one_full_model_that_from_pretrained_loads(sharded_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, _, run_dir = sharded_run
    assert [p.name for p in run_dir.glob("*.safetensors")] == ["model.safetensors"]
    assert not list(run_dir.glob("pytorch_model_fsdp*")) and not list(run_dir.glob("optimizer*"))
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    summary = json.loads((run_dir / "perplexity.json").read_text())
    assert model.num_parameters() == summary["parameters"] and summary["run"]["state_dict_type"] == "SHARDED_STATE_DICT"
    for checkpoint in ("checkpoint-6", "checkpoint-12"):  # described beside the shards: what model they make up
        assert saved_in_form(run_dir / checkpoint, "SHARDED_STATE_DICT")
        for name in ("config.json", "tokenizer.json", "training_args.bin"):
            assert (run_dir / checkpoint / name).is_file(), (checkpoint, name)
    exported = export_sharded_checkpoint(run_dir / "checkpoint-12", tmp_path / "exported")
    final = load_file(run_dir / "model.safetensors")  # the last checkpoint holds the final weights
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)


def export_sharded_checkpoint(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    """docs/distributed.md's way to one model.safetensors from a sharded checkpoint, in one plain process."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.mkdir()
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", out / "full.pt")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))
    model.load_state_dict(torch.load(out / "full.pt")["model"])
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() == model.num_parameters()
    return load_file(out / "model.safetensors")


def test_a_sharded_checkpoint_resumes_under_another_number_of_processes(sharded_run, tmp_path):
    """torch.distributed.checkpoint reshards on load: a checkpoint two processes wrote resumes under
    one or four (with the same global batch) and trains on as the two-process run does. Without
    FSDP it is one line, exit 2."""
    from safetensors.torch import load_file

    _, files, two = sharded_run

    reference = load_file(two / "model.safetensors")
    for processes in (1, 4):
        resumed = tmp_path / f"on-{processes}"
        shutil.copytree(two / "checkpoint-6", resumed / "checkpoint-6")
        result = run(sharded_command(files, resumed, processes, "--resume_from_checkpoint", "auto"))
        assert re.findall(r"Resuming from \S+", result.stderr) == [f"Resuming from {resumed / 'checkpoint-6'}"]
        assert json.loads((resumed / "perplexity.json").read_text())["run"]["processes"] == processes
        losses, expected = train_losses(resumed), train_losses(two)
        assert sorted(s for s in losses if s > 6) == [8, 10, 12]
        for step in (8, 10, 12):
            assert losses[step] == pytest.approx(expected[step], abs=1e-5), (processes, step)  # measured: 2.4e-7
        saved = load_file(resumed / "model.safetensors")
        assert saved.keys() == reference.keys()
        for name, tensor in reference.items():
            torch.testing.assert_close(saved[name], tensor, atol=1e-4, rtol=0)  # measured: within 8.5e-6
        assert saved_in_form(resumed / "checkpoint-12", "SHARDED_STATE_DICT", processes)

    plain = run_hf_clm("train", *recipe_args(files, tmp_path / "plain", *STEPS, "--resume_from_checkpoint",
                                             str(two / "checkpoint-6")), env=ONE_THREAD)
    errors = [line for line in plain.stderr.splitlines() if line.startswith("hf-clm: error:")]
    assert plain.returncode == 2 and len(errors) == 1, plain.stderr[-2000:]
    assert errors[0] == (f"hf-clm: error: {two / 'checkpoint-6'} was saved by FSDP and resumes under FSDP only: launch "
                         f"with 'accelerate launch --config_file recipes/accelerate/fsdp.yaml' (on CPU add "
                         f"--mixed_precision no), with any number of processes")
    assert not (tmp_path / "plain").exists()


def test_a_launch_that_asks_for_sharding_gets_it_or_fails_in_one_line(tmp_path, text_files):
    """Each case asks for FSDP where accelerate would set up something else, or for what FSDP's sharded
    checkpoints cannot do: a one-line error, exit 2."""
    train = ["-m", "hf_clm", "train"]
    cases = {
        "fsdp 1 on cpu": (accelerate_fsdp(*train, *recipe_args(text_files, tmp_path / "v1"),
                                          extra_flags=("--fsdp_version", "1")), "FSDP on CPU needs FSDP2"),
        "recipe fsdp without a launcher": (hf_clm_command("train", *recipe_args(text_files, tmp_path / "plain"),
                                                          "--fsdp", "full_shard"), "FSDP needs a distributed launch"),
        "sharded checkpoints of the model only": (
            accelerate_fsdp(*train, *recipe_args(text_files, tmp_path / "model-only", "--save_only_model", "true")),
            "save_only_model leaves out the optimizer state, and FSDP's sharded checkpoints write the weights with it"),
    }
    for name, (command, message) in cases.items():
        result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=600)
        errors = [line for line in result.stderr.splitlines() if line.startswith("hf-clm: error:")]
        assert result.returncode != 0 and len(errors) >= 1 and message in errors[0], (name, result.stderr[-2000:])
        assert not (tmp_path / name).exists()
