"""Corpus mixtures: two real sources (a large one of words, a small one of digits, so every block
tells its source), weights 0.75/0.25, tokenized with a real BPE, interleaved, trained by Trainer."""

import json
import logging
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ONE_THREAD, hf_clm_command, make_documents, run_hf_clm, subprocess_env

from hf_clm.data.interleave import window_shares
from hf_clm.data.mixture import mixture_data
from hf_clm.recipe.parser import parse_recipe
from hf_clm.training.checkpoints import newest_complete_checkpoint

WEIGHTS = {"words": 0.75, "digits": 0.25}


def digit_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(1000)) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


def write_sources(root: Path, words: int = 400, digits: int = 40) -> dict[str, Path]:
    """A large source of English words and a small one of numbers (about 10x fewer tokens)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"words": root / "words.txt", "digits": root / "digits.txt"}
    files["words"].write_text("\n\n".join(make_documents(words, seed=1)) + "\n", encoding="utf-8")
    files["digits"].write_text("\n\n".join(digit_documents(digits, seed=2)) + "\n", encoding="utf-8")
    return files


def mixture_recipe(root: Path, files: dict[str, Path], output_dir: Path, **changes) -> Path:
    values = {"mixture": [{"train_files": str(files["words"]), "weight": 3},
                          {"train_files": str(files["digits"]), "weight": 1}],
              "sample_by": "paragraph", "train_tokenizer": True, "vocab_size": 400, "block_size": 16,
              "n_layer": 1, "n_head": 2, "n_embd": 16, "max_steps": 500, "per_device_train_batch_size": 8,
              "learning_rate": 1e-2, "eval_steps": 500, "save_steps": 500, "logging_steps": 10, "seed": 0,
              "output_dir": str(output_dir), "disable_tqdm": True, **changes}
    path = root / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    return root, write_sources(root)


def test_every_window_of_1000_blocks_holds_each_share_within_1_percent(sources, caplog):
    root, files = sources
    recipe = parse_recipe([str(mixture_recipe(root, files, root / "unit"))])
    with caplog.at_level(logging.WARNING):
        data = mixture_data(recipe)
    assert "the weights sum to 4, not 1; normalised to words 0.75, digits 0.25" in caplog.text
    rows = {row["name"]: row for row in data.mixture}
    assert rows["words"]["train"]["blocks"] > 5 * rows["digits"]["train"]["blocks"]  # very different sizes
    assert len(data.train) == 500 * 8
    # the source of each training block, read from the block itself: digits or words
    blocks = data.train.with_format("numpy")[:]["input_ids"].tolist()
    texts = data.tokenizer.batch_decode(blocks, skip_special_tokens=True)
    is_digits = np.array([not any(c.isalpha() for c in text) for text in texts])
    sources_of = np.where(is_digits, 1, 0)
    shares = window_shares(sources_of, 2)
    assert len(shares) == len(data.train) - 999
    assert np.abs(shares - [0.75, 0.25]).max() <= 0.01
    # the small source repeats (budget share 1,000 blocks > its blocks), said at start, each pass reshuffled
    assert rows["digits"]["trained_blocks"] == int(is_digits.sum()) == 1000
    assert rows["digits"]["passes"] > 1 and "source 'digits' has" in caplog.text and "it repeats" in caplog.text
    digits = [tuple(ids) for ids, d in zip(blocks, is_digits) if d]
    per_pass = rows["digits"]["train"]["blocks"]
    assert sorted(digits[:per_pass]) == sorted(digits[per_pass:2 * per_pass]) and digits[:per_pass] != \
        digits[per_pass:2 * per_pass]
    # each source's held-out blocks are an evaluation set of its name
    assert set(data.eval_sets) == {"words", "digits"}
    assert len(data.eval_sets["digits"]) == rows["digits"]["validation"]["blocks"] > 0


def test_the_order_is_a_function_of_blocks_and_seed(sources):
    root, files = sources
    first = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "a"))]))
    again = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "b"))]))
    other_seed = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "c", seed=1))]))
    ids = [data.train.with_format("numpy")[:]["input_ids"] for data in (first, again, other_seed)]
    assert np.array_equal(ids[0], ids[1])
    assert not np.array_equal(ids[0], ids[2])


def test_stop_ends_training_where_the_first_source_runs_out(sources, caplog):
    root, files = sources
    recipe = parse_recipe([str(mixture_recipe(root, files, root / "stop", mixture_exhausted="stop"))])
    with caplog.at_level(logging.WARNING):
        data = mixture_data(recipe)
    digits = next(row for row in data.mixture if row["name"] == "digits")
    steps = recipe.training_args.max_steps
    assert steps < 500 and f"training stops at step {steps} of 500 (mixture_exhausted: stop)" in caplog.text
    assert len(data.train) == steps * 8
    assert digits["trained_blocks"] <= digits["train"]["blocks"]  # no block of it twice
    assert digits["train"]["blocks"] - digits["trained_blocks"] < 8 * 0.25 + 2


# ---- a real run, killed after a checkpoint and resumed ----------------------------------------------

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


@pytest.mark.full
def test_a_resumed_mixture_run_ends_with_the_uninterrupted_weights(killed_and_resumed):
    whole, killed, step = killed_and_resumed
    assert 0 < step < STEPS
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    losses = [{e["step"]: e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"]
               if "loss" in e and e["step"] > step} for d in (whole, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == (STEPS - step) // 5


@pytest.mark.full
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


# ---- a prepared mixture ------------------------------------------------------------------------------

def test_a_prepared_mixture_lists_each_source_and_trains_with_other_weights(sources, hf_clm_main, tmp_path):
    root, files = sources
    folder = tmp_path / "prepared"
    recipe = mixture_recipe(tmp_path, files, tmp_path / "run", prepared_dataset=str(folder), max_steps=4,
                            eval_steps=4, save_steps=4)
    prepared = hf_clm_main("prepare", recipe)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    description = json.loads((folder / "prepared.json").read_text())
    rows = {row["name"]: row for row in description["mixture"]}
    assert set(rows) == {"words", "digits"}
    assert sum(row["train"]["blocks"] for row in rows.values()) == description["counts"]["train"]["blocks"]
    assert rows["digits"]["train"]["tokens"] < rows["words"]["train"]["tokens"] / 5
    trained = hf_clm_main("train", recipe, "--mixture", json.dumps(
        [{"train_files": str(files["words"]), "weight": 0.5}, {"train_files": str(files["digits"]), "weight": 0.5}]))
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert [row["trained_blocks"] for row in summary["mixture"]] == [16, 16]
    assert [row["train"] for row in summary["mixture"]] == [rows["words"]["train"], rows["digits"]["train"]]
