"""Run record: how a run actually ran, read from the live Trainer and its accelerator (not from the
recipe or the launch config), so a setting that did not take effect shows.

It is taken when training begins, once Trainer has built the optimizer, and goes into the log's
first lines, ``perplexity.json`` (key ``run``) and the report.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer, TrainerCallback

from hf_clm.data.attention import attention_scope
from hf_clm.evaluation.report import describe
from hf_clm.recipe.schema import Recipe
from hf_clm.training.optimizer import built_optimizer_name

logger = logging.getLogger(__name__)

PARALLELISM = {DistributedType.NO: "none", DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}


def parallelism(trainer: Trainer) -> str:
    """none / ddp / fsdp / deepspeed: what wraps the model, not what was asked for."""
    state = trainer.accelerator.state
    if state.distributed_type in PARALLELISM:
        return PARALLELISM[state.distributed_type]
    return "ddp" if trainer.accelerator.num_processes > 1 else "none"


def parallelism_settings(trainer: Trainer, kind: str) -> dict[str, Any]:
    """The setting that decides what each kind shards or syncs."""
    state = trainer.accelerator.state
    if kind == "fsdp":
        plugin = state.fsdp_plugin
        return {"fsdp_version": plugin.fsdp_version, "reshard_after_forward": str(plugin.reshard_after_forward),
                "state_dict_type": str(plugin.state_dict_type).split(".")[-1],
                "wrapped_layers": plugin.transformer_cls_names_to_wrap}
    if kind == "deepspeed":
        return {"zero_stage": state.deepspeed_plugin.zero_stage}
    if kind == "ddp":
        handler = trainer.accelerator.ddp_handler
        return {"find_unused_parameters": bool(handler.find_unused_parameters) if handler else False}
    return {}


def mixed_precision(trainer: Trainer, kind: str) -> str:
    if kind == "deepspeed":  # DeepSpeed casts by its own config; accelerate's state then says "no"
        config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
        return next((name for name in ("bf16", "fp16") if config.get(name, {}).get("enabled") is True), "no")
    return trainer.accelerator.state.mixed_precision


def machines(processes: int) -> int:
    """Machines (nodes) of the launch: torchrun's processes per machine divide the world."""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    return max(1, processes // max(1, per_machine))


def cpu_model() -> str | None:
    """The CPU's model name, where /proc/cpuinfo tells."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model() or platform.processor() or platform.machine()


def optimizer_name(trainer: Trainer, recipe: Recipe) -> str:
    """The optimizer Trainer built; before it has built one, the one the recipe asks for."""
    if trainer.optimizer is not None:
        return built_optimizer_name(trainer.optimizer)
    return "Muon + AdamW" if recipe.uses_muon() else str(getattr(trainer.args.optim, "value", trainer.args.optim))


def run_record(trainer: Trainer, recipe: Recipe) -> dict[str, Any]:
    args, accelerator = trainer.args, trainer.accelerator
    kind = parallelism(trainer)
    processes = accelerator.num_processes
    blocks = recipe.global_batch_blocks(processes)
    return {
        "parallelism": kind,
        **parallelism_settings(trainer, kind),
        "processes": processes,
        "machines": machines(processes),
        "backend": accelerator.state.backend,
        "device_type": accelerator.device.type,
        "device_name": device_name(accelerator.device),
        "mixed_precision": mixed_precision(trainer, kind),
        "attention": getattr(trainer.model.config, "_attn_implementation", None),
        "attention_scope": attention_scope(trainer.model),
        "torch_compile": bool(args.torch_compile),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "liger_kernel": bool(args.use_liger_kernel),
        "optimizer": optimizer_name(trainer, recipe),
        "max_train_seconds": recipe.run_args.max_train_seconds,
        # what the curves hold: the report's notes say how often the run evaluated and logged
        "eval_strategy": str(getattr(args.eval_strategy, "value", args.eval_strategy)),
        "eval_steps": args.eval_steps,
        "logging_steps": args.logging_steps,
        "global_batch_blocks": blocks,
        "global_batch_tokens": recipe.tokens_per_step(processes),
    }



class RunRecorder(TrainerCallback):
    """Takes the record when training begins (the optimizer exists from then on) and logs it once
    (main process); a run that trains no step is recorded when it asks for ``record``."""

    def __init__(self, trainer: Trainer, recipe: Recipe):
        self.trainer, self.recipe = trainer, recipe
        self.taken: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.take()

    def take(self) -> dict[str, Any]:
        self.taken = run_record(self.trainer, self.recipe)
        if self.trainer.is_world_process_zero():
            logger.info("Run: %s", describe(self.taken))
        return self.taken

    @property
    def record(self) -> dict[str, Any]:
        return self.taken if self.taken is not None else self.take()


def record_run(trainer: Trainer, recipe: Recipe) -> RunRecorder:
    recorder = RunRecorder(trainer, recipe)
    trainer.add_callback(recorder)
    return recorder
