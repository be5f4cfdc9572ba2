"""Corpus mixtures: two real sources (a large one of words, a small one of digits, so every block
tells its source), weights 0.75/0.25, tokenized with a real BPE, interleaved, trained by Trainer."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD, hf_clm_command, run_hf_clm, subprocess_env
from support.mixture import mixture_recipe, write_sources

from hf_clm.training.checkpoints import newest_complete_checkpoint

WEIGHTS = {"words": 0.75, "digits": 0.25}

STEPS = 200

RUN = {"max_steps": STEPS, "save_steps": 20, "eval_steps": STEPS, "logging_steps": 5, "save_total_limit": 3}


def kill_after_first_checkpoint(command: list[str], output_dir: Path) -> int:
    process = subprocess.Popen(command, env=subprocess_env(ONE_THREAD), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if output_dir.is_dir() and newest_complete_checkpoint(output_dir):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    return process.wait()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture-resume")
    files = write_sources(root)
    whole = run_hf_clm("train", mixture_recipe(root, files, root / "whole", **RUN), env=ONE_THREAD)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_dir = root / "killed"
    recipe = mixture_recipe(root, files, killed_dir, **RUN)
    code = kill_after_first_checkpoint(hf_clm_command("train", recipe), killed_dir)
    assert code == -signal.SIGKILL, "the run ended before it could be killed; raise STEPS"
    step = int(newest_complete_checkpoint(killed_dir).name.split("-")[1])
    resumed = run_hf_clm("train", recipe, "--resume_from_checkpoint", "auto", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return root / "whole", killed_dir, step


def test_a_resumed_mixture_run_ends_with_the_uninterrupted_weights(killed_and_resumed):
    whole, killed, step = killed_and_resumed
    assert 0 < step < STEPS
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    losses = [{e["step"]: e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"]
               if "loss" in e and e["step"] > step} for d in (whole, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == (STEPS - step) // 5


def test_the_report_and_record_list_each_source(killed_and_resumed):
    whole, _, _ = killed_and_resumed
    summary = json.loads((whole / "perplexity.json").read_text())
    assert [row["name"] for row in summary["mixture"]] == ["words", "digits"]
    assert {name: figures["perplexity"] > 1 for name, figures in summary["eval_sets"].items()} == \
        {"words": True, "digits": True}
    trained = {row["name"]: row["trained_blocks"] for row in summary["mixture"]}
    assert trained == {"words": STEPS * 8 * 3 // 4, "digits": STEPS * 8 // 4}
    report = json.loads((whole / "report.json").read_text())["runs"][0]
    assert set(report["eval_sets"]) == {"words", "digits"} and report["mixture"] == summary["mixture"]
    markdown = (whole / "report.md").read_text()
    for name in ("words", "digits"):
        perplexity = f"{summary['eval_sets'][name]['perplexity']:.2f}"
        assert any(f"| {name} | {perplexity} |" in line for line in markdown.splitlines())  # the eval-sets table
        assert any(f"| {name} | {WEIGHTS[name]:g} |" in line and line.endswith(f"| {perplexity} |")
                   for line in markdown.splitlines())  # the mixture table
