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
import statistics
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


def checkpoint_rows(quick: bool, corpus: Path, tokenizer: Path, folder: Path) -> list[dict]:
    rounds = 1 if quick else 2
    saves: dict[str, list[dict]] = {form: [] for form in FORMS}
    for run in range(rounds):
        for form in FORMS:
            saves[form] += form_saves(corpus, tokenizer, folder, form, run, quick)
    seconds = {form: statistics.median(s["seconds"] for s in saves[form]) for form in FORMS}
    peak = {form: max(s["peak_rss_mib"] for s in saves[form]) for form in FORMS}
    added = {form: max(s["peak_rss_mib"] - s["rss_before_mib"] for s in saves[form]) for form in FORMS}
    rank1 = {form: max(s["rank1_peak_rss_mib"] for s in saves[form]) for form in FORMS}
    size = {form: saves[form][-1]["bytes"] / 2**20 for form in FORMS}
    full, sharded = FORMS
    shape = "GPT-2 1×64" if quick else "GPT-2 124M (12×768, vocab 50,257)"
    stage = "checkpoint save, 2-process FSDP2 (CPU, gloo)"
    return [
        {"stage": stage, "what": "SHARDED_STATE_DICT vs FULL_STATE_DICT: wall time of a save",
         "ratio": seconds[full] / seconds[sharded], "target": "≥ 1", "met": seconds[sharded] <= seconds[full],
         "context": f"median {seconds[sharded]:.1f} s vs {seconds[full]:.1f} s over {len(saves[full])} saves each "
                    f"(all ranks waiting); checkpoint {size[sharded]:,.0f} MiB vs {size[full]:,.0f} MiB; {shape}"},
        {"stage": stage, "what": "SHARDED_STATE_DICT vs FULL_STATE_DICT: rank 0's peak RSS during a save",
         "ratio": peak[full] / peak[sharded], "target": "≥ 1", "met": peak[sharded] <= peak[full],
         "context": f"{peak[sharded]:,.0f} MiB vs {peak[full]:,.0f} MiB, of which the save added {added[sharded]:,.0f} "
                    f"vs {added[full]:,.0f} MiB (rank 1's peak {rank1[sharded]:,.0f} vs {rank1[full]:,.0f} MiB); {shape}"},
    ]
