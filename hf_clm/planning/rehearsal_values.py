"""The recipe values a rehearsal (``hf-clm train RECIPE --rehearse K``) runs: K steps into its own
folder, a checkpoint at step K, nothing finished or published, and the settings this machine cannot
use turned off, each named in one line. :func:`rehearsal_values` is handed to the recipe parser,
which calls it before Trainer's arguments are built."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from hf_clm.errors import HfClmError
from hf_clm.planning.meta import FLASH_KERNELS

logger = logging.getLogger(__name__)

REHEARSAL_SUFFIX = "-rehearsal"
# Keys that shape the finished run: a recipe file's values are left for the real run; typed beside
# --rehearse they contradict it.
FINISHED_RUN_FLAGS = ("push_to_hub", "merge_adapter", "resume_from_checkpoint", "max_steps", "max_tokens",
                      "max_train_seconds")
FUSED_CPU_ADAMW_TORCH = (2, 4)  # torch.optim.AdamW(fused=True) runs on CPU tensors from torch 2.4
C_COMPILERS = ("cc", "gcc", "clang")


def rehearsal_dir(output_dir: str) -> str:
    path = Path(output_dir)
    return str(path.parent / (path.name + REHEARSAL_SUFFIX))


def rehearsal_values(values: dict[str, Any], flags: set[str]) -> dict[str, Any]:
    """The recipe's values as the rehearsal runs them: K steps into its own folder, a checkpoint at
    step K, no evaluation until the one it runs itself, nothing published; settings this machine
    cannot use turned off, each named in one line."""
    steps = values["rehearse"]
    if contradicting := [f"--{key}" for key in FINISHED_RUN_FLAGS if key in flags and values[key] not in
                         (None, False, -1)]:
        raise HfClmError(f"{', '.join(contradicting)} {'contradicts' if len(contradicting) == 1 else 'contradict'} "
                         f"--rehearse: a rehearsal trains {steps} steps into its own folder, resumes from its own "
                         f"checkpoint and finishes nothing (no merge, no push); drop "
                         f"{'it' if len(contradicting) == 1 else 'them'} (a recipe file's values are left for the "
                         f"real run)")
    if problem := remote_corpus_problem(values):
        raise HfClmError(problem)
    if left := finished_run_settings(values):
        logger.warning("rehearsal: %s left for the real run", ", ".join(left))
    blocks_per_step = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
    values = {
        **values, "output_dir": rehearsal_dir(values["output_dir"]), "max_steps": steps, "max_tokens": None,
        "max_train_seconds": None, "resume_from_checkpoint": None, "overwrite_output_dir": False,
        "push_to_hub": False, "hub_token": None, "merge_adapter": False, "report_to": "none",
        "eval_strategy": "no", "eval_on_start": False, "load_best_model_at_end": False,
        "save_strategy": "steps", "save_steps": steps, "save_total_limit": None,
        # the recipe's peak rate throughout: a schedule squeezed into K steps would end at 0, and the
        # resumed step would then check nothing
        "lr_scheduler_type": "constant", "lr_scheduler_kwargs": {}, "warmup_steps": 0,
        # a stream fills its shuffle buffer before the first batch: only as much as the rehearsal trains on
        "shuffle_buffer_size": min(values["shuffle_buffer_size"], (steps + 1) * blocks_per_step),
    }
    return {**values, **device_changes(values)}


def remote_corpus_problem(values: dict[str, Any]) -> str | None:
    """A rehearsal reads local text: a Hub dataset (streamed or downloaded) needs a local stand-in."""
    from hf_clm.data.corpus import eval_set_specs

    name = values.get("dataset_name")
    if name and not values.get("prepared_dataset") and not Path(name).exists():
        how = "streamed from the Hub" if values.get("streaming") else "from the Hub"
        return (f"rehearse reads local text, and the recipe's corpus is dataset_name {name} ({how}); pass "
                f"--train_files FILE (and --validation_files FILE) with a local sample of it")
    remote = [f"eval_sets.{set_name}" for set_name, spec in eval_set_specs(values.get("eval_sets")).items()
              if isinstance(spec, dict) and not Path(spec["dataset_name"]).exists()]
    if remote:
        verb = "is a Hub dataset" if len(remote) == 1 else "are Hub datasets"
        return (f"rehearse reads local text, and {', '.join(remote)} {verb}; pass --eval_sets none, or --eval_sets "
                f"with local files")
    return None


def finished_run_settings(values: dict[str, Any]) -> list[str]:
    """What the recipe does beyond training that a rehearsal does not do, in words."""
    trackers = [values["report_to"]] if isinstance(values["report_to"], str) else list(values["report_to"] or [])
    trackers = [t for t in trackers if t != "none"]
    return ([f"report_to {', '.join(trackers)}"] if trackers else []) + \
        [key for key in ("push_to_hub", "merge_adapter") if values[key]]


def device_changes(values: dict[str, Any]) -> dict[str, Any]:
    """Settings this machine (without CUDA) cannot use, turned off, each named in one line."""
    from hf_clm.model.build import default_device

    device = default_device()
    if device == "cuda":
        return {}
    changes: dict[str, Any] = {}
    notices: list[str] = []

    def turn_off(reason: str, **change):
        changes.update(change)
        notices.append(reason)

    if values["tf32"]:
        turn_off("tf32 (CUDA only)", tf32=False)
    if device == "cpu":
        for dtype, key in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            used = [k for k in (key, f"{key}_full_eval") if values[k]]
            if used and not cpu_has_fast(dtype):
                turn_off(f"{' and '.join(used)} (this CPU has no {key} matrix instructions; training in fp32)",
                         **dict.fromkeys(used, False))
    if str(getattr(values["optim"], "value", values["optim"])) == "adamw_torch_fused" \
            and torch_version() < FUSED_CPU_ADAMW_TORCH:
        turn_off(f"optim adamw_torch_fused (CUDA only before torch 2.4; this is torch {torch.__version__}): "
                 f"adamw_torch", optim="adamw_torch")
    compile_keys = [k for k in ("torch_compile", "torch_compile_backend", "torch_compile_mode") if values[k]]
    if compile_keys and device == "cpu" and not c_compiler():
        turn_off("torch_compile (no C compiler: inductor builds its CPU kernels with one; install gcc)",
                 torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
    if values["attn_implementation"] in FLASH_KERNELS:
        turn_off(f"attn_implementation {values['attn_implementation']} (CUDA only): sdpa", attn_implementation="sdpa")
    if values["dataloader_pin_memory"] and device == "cpu":
        turn_off("dataloader_pin_memory (it pins batches for copies to a GPU)", dataloader_pin_memory=False)
    if values["load_in_4bit"]:
        turn_off("load_in_4bit (bitsandbytes, CUDA only): the LoRA adapters train on the full-precision model",
                 load_in_4bit=False, **bnb_defaults())
    for notice in notices:
        logger.warning("rehearsal on %s: ignoring %s", device, notice)
    return changes


def cpu_has_fast(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs ``dtype`` matmuls natively on this CPU (AVX-512 BF16, AMX); emulated they are
    slower than fp32 (fp16 by orders of magnitude)."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def c_compiler() -> str | None:
    return next(filter(None, (shutil.which(name) for name in (os.environ.get("CC"), *C_COMPILERS) if name)), None)


def bnb_defaults() -> dict[str, Any]:
    from hf_clm.recipe.checks import BNB_KEYS
    from hf_clm.recipe.schema import ModelArguments

    return {f.name: f.default for f in dataclasses.fields(ModelArguments) if f.name in BNB_KEYS}
