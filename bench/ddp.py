"""Two-process DDP on CPU (gloo): training tokens/s with ``ddp_find_unused_parameters`` true (what
Trainer picks for a transformers model when the recipe says nothing) and false (the package default).

Each run is ``accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m hf_clm train`` on
the same corpus, model and steps; tokens/s is the run's own mean over its training logs
(evaluation and saving left out). The two settings alternate, so drift on a shared machine hits both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"


MODEL_FLAGS = ["--n_layer", "4", "--n_head", "4", "--n_embd", "256"]
QUICK_MODEL_FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32"]


def ddp_tokens_per_second(corpus: Path, folder: Path, find_unused: bool, steps: int, run: int,
                          model_flags: list[str]) -> float:
    output = folder / f"ddp-{'unused' if find_unused else 'default'}-{run}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
               "--main_process_port", "0", "-m", "hf_clm", "train", "--train_files", str(corpus),
               "--sample_by", "paragraph", "--train_tokenizer", "true", "--vocab_size", "2048", "--block_size", "128",
               *model_flags, "--per_device_train_batch_size", "8",
               "--max_steps", str(steps), "--logging_steps", "5", "--eval_strategy", "no", "--save_strategy", "no",
               "--max_eval_samples", "50", "--ddp_find_unused_parameters", str(find_unused).lower(),
               "--output_dir", str(output), "--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2)), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(folder / "ddp-cache")}  # the tokenizer is trained once, for all runs
    run_checked(command, env=env, cwd=REPO)
    summary = json.loads((output / "perplexity.json").read_text())
    assert summary["run"]["find_unused_parameters"] is find_unused  # the setting took effect
    return summary["train_tokens_per_second"]
