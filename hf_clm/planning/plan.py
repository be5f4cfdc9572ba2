"""The plan of a recipe: the model it builds sized on the meta device, its memory per device
(:mod:`hf_clm.planning.memory`), steps, tokens, checkpoint size and time to finish; and, for a run that
does not fit a device, the changes that make it fit. ``hf-clm plan`` prints it; the rehearsal measures
beside it."""

from __future__ import annotations

from hf_clm.planning.memory import (
    GIB,
    STATE_FILE_BYTES,
    USABLE_FRACTION,
    Device,
    Launch,
    Shape,
    memory_per_device,
    meta_model,
    model_config,
    model_shape,
    with_adapter,
)
from hf_clm.recipe.schema import Recipe

FSDP_PROCESSES = (2, 4, 8, 16, 32, 64)  # tried when one process does not fit


def planned_steps(recipe: Recipe, tokens_per_step: int) -> int | None:
    """Optimizer steps: from max_tokens with the planned processes, else max_steps; None for epochs."""
    if recipe.run_args.max_tokens is not None:
        return -(-recipe.run_args.max_tokens // tokens_per_step)
    steps = recipe.training_args.max_steps
    return steps if steps > 0 else None


def peak_flops(recipe: Recipe, device: Device | None) -> float | None:
    if device is not None and device.peak_flops:
        return device.peak_flops
    return recipe.run_args.peak_tflops * 1e12 if recipe.run_args.peak_tflops else None


def checkpoint_bytes(lm, recipe: Recipe, shape: Shape) -> int:
    """One checkpoint folder: the weights (a LoRA run: the adapter) as saved, tied weights once; the
    whole optimizer state (gathered, also under FSDP or ZeRO); scheduler, trainer state and one RNG
    state per process."""
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()
                  if p.requires_grad or recipe.model_args.peft_method != "lora")
    return weights + shape.optimizer_bytes + STATE_FILE_BYTES * (1 + shape.launch.processes)


def recipe_plan(recipe: Recipe, launch: Launch, device: Device | None, mfu: float) -> tuple[dict, Shape]:
    from hf_clm.training.throughput import flops_per_token

    config, source = model_config(recipe)
    base = meta_model(recipe, config)
    per_token = flops_per_token(base, recipe.data_args.block_size)
    lm = with_adapter(base, recipe)
    shape = model_shape(lm, config, recipe, launch)
    memory = memory_per_device(shape)
    tokens_per_step = recipe.tokens_per_step(launch.processes)
    steps = planned_steps(recipe, tokens_per_step)
    tokens_total = steps * tokens_per_step if steps else None
    peak = peak_flops(recipe, device)
    seconds = tokens_total * per_token / (mfu * peak * launch.processes) if tokens_total and peak else None
    args = recipe.training_args
    plan = {
        "model": source,
        "parameters": sum(p.numel() for p in lm.parameters()),
        "trainable_parameters": sum(p.numel() for p in lm.parameters() if p.requires_grad),
        "flops_per_token": per_token, "tokens_per_step": tokens_per_step, "steps": steps,
        "tokens_total": tokens_total,
        "processes": launch.processes, "parallelism": launch.parallelism,
        "precision": "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32",
        "optimizer": "muon" if recipe.uses_muon() else str(getattr(args.optim, "value", args.optim)),
        "per_device_train_batch_size": shape.batch, "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "block_size": shape.block, "gradient_checkpointing": shape.checkpointing,
        "memory_per_device": memory,
        "device": device and {"name": device.name, "memory_bytes": device.memory_bytes,
                              "usable_bytes": device.usable_bytes(), "peak_flops": device.peak_flops},
        "fits": memory["total"] <= device.usable_bytes() if device else None,
        "checkpoint_bytes": checkpoint_bytes(lm, recipe, shape),
        "mfu": mfu, "peak_flops_per_device": peak, "seconds_to_finish": seconds,
    }
    return plan, shape


# ---- when it does not fit ----

def total_bytes(shape: Shape) -> int:
    return memory_per_device(shape)["total"]


def smaller_batch(shape: Shape, accumulation: int, usable: int) -> tuple[str, Shape] | None:
    """The largest per-device batch that fits, with the accumulation that keeps the global batch."""
    blocks = shape.batch * accumulation
    for batch in range(shape.batch - 1, 0, -1):
        if blocks % batch == 0 and total_bytes(shape._replace(batch=batch)) <= usable:
            return (f"--per_device_train_batch_size {batch} --gradient_accumulation_steps {blocks // batch}",
                    shape._replace(batch=batch))
    return None


def fsdp_over(shape: Shape, usable: int) -> tuple[str, Shape] | None:
    if shape.launch.sharded("weights"):
        return None
    counts = (shape.launch.processes,) if shape.launch.processes > 1 else FSDP_PROCESSES
    for processes in counts:
        sharded = shape._replace(launch=shape.launch._replace(parallelism="fsdp full_shard", processes=processes))
        if total_bytes(sharded) <= usable:
            return f"FSDP full shard over {processes} processes (--fsdp full_shard)", sharded
    return None


def fitting_changes(shape: Shape, accumulation: int, usable: int) -> list[tuple[str, Shape]]:
    """Each change that makes the plan fit; when none does alone, gradient checkpointing with one of the others."""
    checkpointed = shape._replace(checkpointing=True)
    changes = [("--gradient_checkpointing true", checkpointed)] \
        if not shape.checkpointing and total_bytes(checkpointed) <= usable else []
    changes += filter(None, [fsdp_over(shape, usable), smaller_batch(shape, accumulation, usable)])
    if changes or shape.checkpointing:
        return changes
    combined = filter(None, [smaller_batch(checkpointed, accumulation, usable), fsdp_over(checkpointed, usable)])
    return [("--gradient_checkpointing true with " + text, changed) for text, changed in combined]


def gib(value: int) -> str:
    return f"{value / GIB:,.1f} GiB"


def not_fitting_message(plan: dict, shape: Shape, device: Device, recipe: Recipe) -> str:
    total, usable = plan["memory_per_device"]["total"], device.usable_bytes()
    changes = fitting_changes(shape, recipe.training_args.gradient_accumulation_steps, usable)
    fixes = "; ".join(f"{text} ({gib(total_bytes(changed))})" for text, changed in changes) or \
        "none of gradient checkpointing, FSDP over up to 64 processes and a smaller per-device batch does"
    return (f"the run does not fit {device.name}: {gib(total)} per device, {gib(total - usable)} over the "
            f"{gib(usable)} usable ({USABLE_FRACTION:.0%} of {gib(device.memory_bytes)}); it fits with: {fixes}")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
