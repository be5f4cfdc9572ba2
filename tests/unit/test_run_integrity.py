"""A run directory people can trust: nothing half-written, nothing secret, nothing silently wrong.

Kills are real SIGKILLs of real ``hf-clm`` processes and a full disk is a file-size limit
(RLIMIT_FSIZE, under which writes fail as they do on a full disk), also in a real process; the
rest calls the command line in process (``hf_clm_main``). The finished run these tests copy is the
session's (conftest's ``finished_run``).
"""

import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import lock_held_by_another_process, recipe_args
from support.run_integrity import copy_of, last_line, truncate

from hf_clm.errors import HfClmError
from hf_clm.run.artifacts import finished_marker_problem, json_text, write_json
from hf_clm.run.files import LOCK_FILENAME, PERPLEXITY_FILENAME
from hf_clm.training.checkpoints import checkpoint_problem, checkpoints

SECRET = "hf_secretTokenThatMustNeverBeWritten77"


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def sharded_checkpoint(folder: Path) -> Path:
    """A checkpoint laid out as FSDP's SHARDED_STATE_DICT writes it (weights and optimizer state in
    torch.distributed.checkpoint folders), here by one process."""
    import torch
    import torch.distributed.checkpoint as dcp

    folder.mkdir(parents=True)
    weights = {"wte.weight": torch.arange(64.0).reshape(8, 8), "ln_f.bias": torch.ones(8)}
    dcp.save({"model": weights}, checkpoint_id=folder / "pytorch_model_fsdp_0")
    dcp.save({"optimizer": {"state": {k: {"exp_avg": v * 2} for k, v in weights.items()}}},
             checkpoint_id=folder / "optimizer_0")
    for name in ("scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
        torch.save({"step": 2}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    return folder


def damaged_run(run_dir: Path, what: str) -> Path:
    """Damage a copy of a finished run; returns the file that is damaged."""
    if what == "truncated weights":
        return truncate(run_dir / "model.safetensors")
    if what == "bad tokenizer.json":
        (run_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
        return run_dir / "tokenizer.json"
    raise ValueError(what)


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_a_hub_token_is_in_no_file_the_run_writes(corpus, tmp_path, how, hf_clm_main, train):
    run_dir = tmp_path / "run"
    if how == "yaml":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"hub_token": SECRET}))
        result = hf_clm_main("train", str(recipe), *recipe_args(corpus, run_dir, "--max_steps", "2", "--save_steps", "2",
                                                           "--eval_steps", "2"))
    else:
        result = train(corpus, run_dir, "--max_steps", "2", "--hub_token", SECRET)
    assert result.returncode == 0, result.stderr[-3000:]
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written) and any("checkpoint-2" in str(p) for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("learning_rate", ["1e3", "1e6"])
def test_divergence_stops_with_one_line_and_no_finished_run(corpus, tmp_path, learning_rate, train):
    run_dir = tmp_path / "run"
    result = train(corpus, run_dir, "--learning_rate", learning_rate, "--max_steps", "30", "--save_steps", "1")
    assert result.returncode == 3, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("hf-clm: error: training diverged at step ") and "lower learning_rate" in line
    step = int(line.split("at step ")[1].split()[0])
    assert "the last finite loss was" in line or step == 1
    assert not (run_dir / PERPLEXITY_FILENAME).exists() and not (run_dir / "model.safetensors").exists()
    from safetensors.torch import load_file
    kept = checkpoints(run_dir)
    assert [int(p.name.split("-")[1]) for p in kept][-1:] == ([step - 1] if step > 1 else [])
    for checkpoint in kept:  # every checkpoint kept is a good one: finite weights, valid JSON
        assert checkpoint_problem(checkpoint) is None
        assert all(t.isfinite().all() for t in load_file(checkpoint / "model.safetensors").values())
        strict_json(checkpoint / "trainer_state.json")


def test_json_files_hold_null_with_a_reason_for_non_finite_numbers(tmp_path):
    path = write_json({"perplexity": math.inf, "loss": math.nan, "nested": {"x": -math.inf}, "ok": 1.5},
                      tmp_path / "figures.json")
    data = strict_json(path)
    assert data["perplexity"] is None and data["loss"] is None and data["nested"]["x"] is None and data["ok"] == 1.5
    assert set(data["non_finite"]) == {"perplexity", "loss", "nested.x"}
    assert data["non_finite"]["perplexity"].startswith("inf") and data["non_finite"]["loss"].startswith("nan")
    assert "NaN" not in json_text([math.nan]) and "Infinity" not in json_text({"a": [math.inf]})


def test_every_json_of_a_finished_run_is_strict_json(finished):
    found = list(finished.rglob("*.json"))
    assert len(found) > 5
    for path in found:
        strict_json(path)


def test_the_marker_records_step_and_weights_and_is_written_after_the_report(finished):
    summary = strict_json(finished / PERPLEXITY_FILENAME)
    assert summary["global_step"] == 4 and set(summary["weights_sha256"]) == {"model.safetensors"}
    assert finished_marker_problem(finished) is None
    for name in ("report.md", "report.json", "curves_by_steps.png", "model.safetensors", "recipe.yaml"):
        assert (finished / name).stat().st_mtime_ns <= (finished / PERPLEXITY_FILENAME).stat().st_mtime_ns, name
    assert not [p for p in finished.iterdir() if p.name.startswith(".")]  # no temporary or lock file left


def test_a_write_removes_a_killed_writers_temporary_and_keeps_a_live_ones(tmp_path):
    path = tmp_path / "report.json"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        host = socket.gethostname()
        live = tmp_path / f".report.json.{host}.{sleeper.pid}.abc.tmp"
        killed = tmp_path / f".report.json.{host}.{ended.stdout.strip()}.abc.tmp"
        elsewhere = tmp_path / f".report.json.another-host.{sleeper.pid}.abc.tmp"
        for temporary in (live, killed, elsewhere):
            temporary.write_text("{")
        write_json({"perplexity": 2.0}, path)
        assert live.exists() and elsewhere.exists() and not killed.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("damage", ["torn first checkpoint", "optimizer.pt", "model.safetensors", "scheduler.pt",
                                    "rng_state.pth"])


def test_auto_skips_damaged_checkpoints_and_starts_fresh_without_one(finished, tmp_path, corpus, damage, train):
    run_dir = copy_of(finished, tmp_path)
    (run_dir / PERPLEXITY_FILENAME).unlink()
    shutil.rmtree(run_dir / "checkpoint-4")
    first = run_dir / "checkpoint-2"
    if damage == "torn first checkpoint":  # killed while saving: no trainer state yet
        (first / "trainer_state.json").unlink()
    else:  # the trainer state is fine, a file is cut short
        part = first / damage
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    assert checkpoint_problem(first) is not None
    result = train(corpus, run_dir, "--resume_from_checkpoint", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting fresh" in result.stderr and "Removing the incomplete checkpoint" in result.stderr
    assert finished_marker_problem(run_dir) is None
    assert strict_json(run_dir / PERPLEXITY_FILENAME)["train_tokens_seen"] == 4 * 8 * 32


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, as meant
@pytest.mark.parametrize("damage", ["no model .metadata", "no optimizer .metadata", "a shard cut short",
                                    "a shard missing", ".metadata corrupted"])


def test_a_sharded_checkpoint_is_complete_only_with_its_metadata_and_whole_shards(tmp_path, damage):
    checkpoint = sharded_checkpoint(tmp_path / "checkpoint-2")
    assert checkpoint_problem(checkpoint) is None
    model, optimizer = checkpoint / "pytorch_model_fsdp_0", checkpoint / "optimizer_0"
    (shard,) = model.glob("*.distcp")
    if damage == "no model .metadata":  # DCP writes .metadata last: the save was cut short before it
        (model / ".metadata").unlink()
    elif damage == "no optimizer .metadata":
        (optimizer / ".metadata").unlink()
    elif damage == "a shard cut short":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "a shard missing":
        shard.unlink()
    else:
        (model / ".metadata").write_bytes((model / ".metadata").read_bytes()[:40])
    expected = {"no model .metadata": "pytorch_model_fsdp_0/: no .metadata",
                "no optimizer .metadata": "optimizer_0/: no .metadata",
                "a shard cut short": f"pytorch_model_fsdp_0/: {shard.name}: ", "a shard missing": f"{shard.name} missing",
                ".metadata corrupted": ".metadata is not readable checkpoint metadata"}[damage]
    assert expected in checkpoint_problem(checkpoint)
    assert "truncated" in checkpoint_problem(checkpoint) or damage != "a shard cut short"


def test_prepare_into_a_locked_folder_names_the_holder(corpus, tmp_path, hf_clm_main):
    target = tmp_path / "blocks"
    target.mkdir()
    args = recipe_args(corpus, tmp_path / "run", "--prepared_dataset", str(target))
    with lock_held_by_another_process(target) as holder:
        result = hf_clm_main("prepare", *args)
    assert result.returncode == 2 and f"is in use by pid {holder.pid}" in last_line(result)
    assert not (target / "prepared.json").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (target / LOCK_FILENAME).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(),
                                                    "locked_at": time.time() - 60, "command": "hf-clm prepare"}))
    result = hf_clm_main("prepare", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (target / "prepared.json").is_file() and not (target / LOCK_FILENAME).exists()


def test_a_lock_file_of_an_earlier_start_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    """A requeued Slurm job starts again once its earlier start has ended, maybe on other nodes: the
    kernel released that start's flock, so its lock file, whatever host it names, is taken over (the
    warning names it); a live holder is refused whatever the Slurm job (its flock is held)."""
    from hf_clm.run.locks import folder_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = {"pid": 1, "host": "node-that-ran-start-0", "locked_at": time.time(), "command": "hf-clm train",
              "slurm_job": "41", "slurm_start": 0}
    (run_dir / LOCK_FILENAME).write_text(json.dumps(holder))
    monkeypatch.setenv("SLURM_JOB_ID", "41")  # the same job, requeued
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with folder_lock(run_dir, "output_dir") as lock:
        taken = json.loads(lock.read_text())
    assert taken["slurm_job"] == "41" and taken["slurm_start"] == 1 and taken["host"] == socket.gethostname()
    with lock_held_by_another_process(run_dir) as live:
        with pytest.raises(HfClmError, match=f"in use by pid {live.pid}"):
            with folder_lock(run_dir, "output_dir"):
                pass


def test_overwrite_validates_first_and_removes_only_what_the_package_wrote(finished, tmp_path, corpus, train):
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "adapter_config.json").write_text("{}")  # left by an earlier LoRA run
    (run_dir / "merged").mkdir()
    (run_dir / "merged" / "model.safetensors").write_bytes(b"old")
    before = (run_dir / "model.safetensors").read_bytes()
    wrong = {**corpus, "train": corpus["train"].with_name("trian.txt")}  # a typo'd path
    result = train(wrong, run_dir, "--overwrite_output_dir", "true")
    assert result.returncode == 2 and "trian.txt' does not exist" in last_line(result)
    assert (run_dir / "model.safetensors").read_bytes() == before and finished_marker_problem(run_dir) is None
    assert (run_dir / "adapter_config.json").exists() and checkpoints(run_dir)
    result = train(corpus, run_dir, "--overwrite_output_dir", "true", "--max_steps", "3", "--save_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-3"]
    assert not (run_dir / "adapter_config.json").exists() and not (run_dir / "merged").exists()
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert finished_marker_problem(run_dir) is None


def test_resuming_from_the_final_checkpoint_trains_nothing(finished, tmp_path, corpus, train):
    run_dir = copy_of(finished, tmp_path)
    # finished: nothing changes at all
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    result = train(corpus, run_dir, "--resume_from_checkpoint", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to train" in result.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()} == stamps
    # killed after the final checkpoint, before the final save: finished without a phantom step
    (run_dir / PERPLEXITY_FILENAME).unlink()
    (run_dir / "model.safetensors").unlink()
    result = train(corpus, run_dir, "--resume_from_checkpoint", "auto", "--max_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    summary = strict_json(run_dir / PERPLEXITY_FILENAME)
    assert summary["global_step"] == 4 and summary["train_tokens_seen"] == 4 * 8 * 32
    assert (run_dir / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()


def test_resuming_from_the_final_checkpoint_mid_epoch_adds_no_phantom_step(corpus, tmp_path, train):
    run_dir = tmp_path / "run"
    assert train(corpus, run_dir, "--max_steps", "5", "--save_steps", "5", "--eval_steps", "5").returncode == 0
    (run_dir / PERPLEXITY_FILENAME).unlink()
    result = train(corpus, run_dir, "--max_steps", "5", "--save_steps", "5", "--eval_steps", "5",
                   "--resume_from_checkpoint", str(run_dir / "checkpoint-5"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-5"]
    assert strict_json(run_dir / "trainer_state.json")["global_step"] == 5


def test_paths_resolve_once_the_same_way_and_the_saved_recipe_runs_from_anywhere(corpus, tmp_path, hf_clm_main):
    home, work = tmp_path / "home", tmp_path / "work"
    shutil.copytree(corpus["train"].parent, work / "data")
    home.mkdir()
    args = [a if a not in {str(corpus["train"]), str(corpus["validation"])} else "data/" + Path(a).name
            for a in recipe_args(corpus, Path("runs/r"), "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2")]
    result = hf_clm_main("prepare", *args, "--prepared_dataset", "~/blocks", env={"HOME": str(home)}, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (home / "blocks" / "prepared.json").is_file() and not (work / "~").exists()
    result = hf_clm_main("train", *args, "--prepared_dataset", "~/blocks", env={"HOME": str(home)}, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((work / "runs" / "r" / "recipe.yaml").read_text())
    assert saved["prepared_dataset"] == str(home / "blocks") and saved["output_dir"] == str(work / "runs" / "r")
    assert saved["train_files"] == [str(work / "data" / "train.txt")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = hf_clm_main("train", str(work / "runs" / "r" / "recipe.yaml"), "--output_dir", str(tmp_path / "again"),
                    cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("command,what", [
    ("generate", "truncated weights"), ("generate", "bad tokenizer.json"),
    ("perplexity", "truncated weights"), ("explain", "bad tokenizer.json"),
])


def test_a_damaged_run_directory_is_one_line_naming_the_file(finished, tmp_path, corpus, command, what, hf_clm_main):
    run_dir = copy_of(finished, tmp_path)
    damaged = damaged_run(run_dir, what)
    extra = {"generate": ["hello"], "explain": ["the cat sat"], "perplexity": ["--data", str(corpus["validation"])]}
    result = hf_clm_main(command, str(run_dir), *extra[command])
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line(result).startswith("hf-clm: error: ") and "Traceback" not in result.stderr
    assert str(damaged) in last_line(result) or (damaged.name in last_line(result) and str(run_dir) in last_line(result))


@pytest.mark.parametrize("damage", ["missing arrow file", "bad prepared.json", "bad tokenizer"])
def test_a_damaged_prepared_dataset_is_one_line(corpus, tmp_path, damage, hf_clm_main):
    target = tmp_path / "blocks"
    args = recipe_args(corpus, tmp_path / "run", "--prepared_dataset", str(target), "--max_steps", "2")
    assert hf_clm_main("prepare", *args).returncode == 0
    if damage == "missing arrow file":
        next((target / "train").glob("*.arrow")).unlink()
    elif damage == "bad prepared.json":
        (target / "prepared.json").write_text("")
    else:
        (target / "tokenizer" / "tokenizer.json").write_text("{")
    result = hf_clm_main("train", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("hf-clm: error: ") and str(target) in line and "hf-clm prepare" in line
