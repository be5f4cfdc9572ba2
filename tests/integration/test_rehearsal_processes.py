"""``hf-clm train RECIPE --rehearse K``: K steps of the recipe's shapes, a checkpoint, a real resume, one
short evaluation and the measured figures beside the plan's, in OUTPUT_DIR-rehearsal; nothing finished."""

import json
import re

import torch
from conftest import run_hf_clm
from support.rehearsal import small_recipe


def test_rehearsal_measures_beside_the_plan_resumes_and_finishes_nothing(tmp_path):
    recipe = small_recipe(tmp_path, push_to_hub=True, license="mit", hub_model_id="tester/x")
    result = run_hf_clm("train", recipe, "--rehearse", "2", "--peak_tflops", "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rehearsal: push_to_hub left for the real run" in result.stderr
    table = result.stdout[result.stdout.index("rehearsal on cpu" if not torch.cuda.is_available() else "rehearsal on"):]
    assert re.search(r"^\s+measured\s+plan$", table, re.MULTILINE), table
    assert re.search(r"^step time\s+\d+\.\d\d s\s+\d[\d.]* (ms|s) at 40% MFU$", table, re.MULTILINE), table
    assert re.search(r"^peak memory\s+[\d.,]+ (KiB|MiB|GiB)\s+[\d.,]+ (KiB|MiB|GiB)$", table, re.MULTILINE), table
    assert "checkpoint-2 written (global_step 2) and resumed from to step 3" in table

    folder = tmp_path / "out-rehearsal"
    assert json.loads((folder / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 3  # the resumed Trainer's
    saved = torch.load(folder / "checkpoint-2" / "optimizer.pt", weights_only=False)
    rates = [group["lr"] for group in saved["param_groups"]]
    assert rates and all(rate > 0 for rate in rates)  # the resumed step trains, at the recipe's rate
    figures = json.loads((folder / "rehearsal.json").read_text())
    assert figures["finished"] is False and figures["resumed_to_step"] == 3 and len(figures["step_seconds"]) == 2
    assert figures["plan_step_seconds"] > 0 and figures["peak_memory_bytes"] > figures["measured_training_memory_bytes"]
    assert figures["eval_blocks"] == 2 * 8  # two evaluation batches (per_device_eval_batch_size 8)
    assert not (folder / "perplexity.json").exists() and not (folder / "model.safetensors").exists()
    assert not (tmp_path / "out").exists()  # the real run's output_dir is left alone


def test_a_rehearsal_replaces_the_last_one_and_nothing_else(tmp_path, hf_clm_main):
    recipe = small_recipe(tmp_path)
    folder = tmp_path / "out-rehearsal"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    refused = hf_clm_main("train", recipe, "--rehearse", "1")
    assert refused.returncode == 2 and "holds files a rehearsal did not write (mine.txt)" in refused.stderr
    (folder / "mine.txt").unlink()
    for steps in (2, 1):
        assert hf_clm_main("train", recipe, "--rehearse", str(steps)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1", "rehearsal.json", "trainer_state.json"]
