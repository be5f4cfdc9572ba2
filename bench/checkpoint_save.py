"""Checkpoint saves under two-process FSDP2 on CPU (gloo): ``fsdp_state_dict_type`` FULL_STATE_DICT
(every save gathers the whole model and optimizer state on rank 0, which writes them) against
SHARDED_STATE_DICT (each rank writes its own part with torch.distributed.checkpoint).

Each run is ``accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2
--mixed_precision no --fsdp_state_dict_type FORM -m bench.checkpoint_probe ...``: GPT-2 124M's shape
(12 layers x 768, GPT-2's vocabulary of 50,257) from scratch, a checkpoint after every step. Per
save: the seconds training stood still and rank 0's peak resident memory during it. The two forms
alternate, so drift on a shared machine hits both.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp.yaml"
FORMS = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")

MODEL_FLAGS = ["--n_layer", "12", "--n_head", "12", "--n_embd", "768"]
QUICK_MODEL_FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "64"]


def form_saves(corpus: Path, tokenizer: Path, folder: Path, form: str, run: int, quick: bool) -> list[dict]:
    """Every checkpoint save of one run: rank 0's record with rank 1's seconds beside it."""
    output, record = folder / f"ckpt-{form}-{run}", folder / f"ckpt-record-{form}-{run}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
               "--fsdp_state_dict_type", form, "-m", "bench.checkpoint_probe", str(record),
               "--train_files", str(corpus), "--sample_by", "paragraph", "--tokenizer_name_or_path", str(tokenizer),
               "--train_tokenizer", "false", "--block_size", "128", *(QUICK_MODEL_FLAGS if quick else MODEL_FLAGS),
               "--per_device_train_batch_size", "1", "--max_steps", "2" if quick else "3", "--save_steps", "1",
               "--logging_steps", "1", "--eval_strategy", "no", "--max_eval_samples", "50",
               "--output_dir", str(output), "--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2)), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(folder / "ckpt-cache")}
    run_checked(command, env=env, cwd=REPO)
    summary = json.loads((output / "perplexity.json").read_text())
    assert summary["run"]["state_dict_type"] == form  # the form took effect
    shutil.rmtree(output)  # a full checkpoint of this model is ~2 GB
    rank0, rank1 = (json.loads((record / f"rank{rank}.json").read_text())["saves"] for rank in (0, 1))
    return [{**save, "rank1_peak_rss_mib": other["peak_rss_mib"]} for save, other in zip(rank0, rank1)]
