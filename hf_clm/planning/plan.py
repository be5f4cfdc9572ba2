"""The plan of a recipe: the model it builds sized on the meta device, its memory per device
(:mod:`hf_clm.planning.memory`), steps, tokens, checkpoint size and time to finish; and, for a run that
does not fit a device, the changes that make it fit. ``hf-clm plan`` prints it; the rehearsal measures
beside it."""

from __future__ import annotations

from hf_clm.planning.launch import GIB, USABLE_FRACTION, Device, Launch
from hf_clm.planning.memory import STATE_FILE_BYTES, Shape, memory_per_device, model_shape
from hf_clm.planning.meta import meta_model, model_config, with_adapter
from hf_clm.recipe.schema import Recipe
from hf_clm.training.throughput import flops_from_tflops

FSDP_PROCESSES = (2, 4, 8, 16, 32, 64)  # tried when one process does not fit


def planned_length(recipe: Recipe, tokens_per_step: int, tokens_per_second: float | None
                   ) -> tuple[int | None, float | None]:
    """(optimizer steps, seconds to finish): from max_tokens with the planned processes, else max_steps,
    the seconds at the plan's throughput; a time budget (max_train_seconds) is the seconds, and its
    steps those the plan's throughput fills it with (an estimate; None without a peak FLOP/s); None
    steps for epochs."""
    budget = recipe.run_args.max_train_seconds
    if budget is not None:
        return (int(budget * tokens_per_second // tokens_per_step) if tokens_per_second else None), budget
    if recipe.run_args.max_tokens is not None:
        steps = -(-recipe.run_args.max_tokens // tokens_per_step)
    else:
        steps = recipe.training_args.max_steps if recipe.training_args.max_steps > 0 else None
    seconds = steps * tokens_per_step / tokens_per_second if steps and tokens_per_second else None
    return steps, seconds


def peak_flops(recipe: Recipe, device: Device | None) -> float | None:
    if device is not None and device.peak_flops:
        return device.peak_flops
    return flops_from_tflops(recipe.run_args.peak_tflops)


def checkpoint_bytes(lm, recipe: Recipe, shape: Shape) -> int:
    """One checkpoint folder: the weights (a LoRA run: the adapter) as saved, tied weights once; the
    whole optimizer state (gathered, also under FSDP or ZeRO); scheduler, trainer state and one RNG
    state per process."""
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()
                  if p.requires_grad or recipe.model_args.peft_method != "lora")
    return weights + shape.optimizer_bytes + STATE_FILE_BYTES * (1 + shape.launch.processes)


def recipe_plan(recipe: Recipe, launch: Launch, device: Device | None, mfu: float,
                vocab_size: int | None = None) -> tuple[dict, Shape]:
    """The plan and the shape its memory terms were computed from. ``vocab_size``: plan's
    ``--vocab_size``, for a tokenizer that is not on this machine."""
    from hf_clm.training.throughput import flops_per_token

    config, source = model_config(recipe, vocab_size)
    base = meta_model(recipe, config)
    per_token = flops_per_token(base, recipe.data_args.block_size)
    lm = with_adapter(base, recipe)
    shape = model_shape(lm, config, recipe, launch)
    memory = memory_per_device(shape)
    tokens_per_step = recipe.tokens_per_step(launch.processes)
    peak = peak_flops(recipe, device)
    tokens_per_second = mfu * peak * launch.processes / per_token if peak else None
    steps, seconds = planned_length(recipe, tokens_per_step, tokens_per_second)
    args = recipe.training_args
    plan = {
        "model": source,
        "parameters": sum(p.numel() for p in lm.parameters()),
        "trainable_parameters": sum(p.numel() for p in lm.parameters() if p.requires_grad),
        "flops_per_token": per_token, "tokens_per_step": tokens_per_step, "steps": steps,
        "tokens_total": steps * tokens_per_step if steps else None,
        "time_budget_seconds": recipe.run_args.max_train_seconds,
        "steps_estimated": recipe.run_args.max_train_seconds is not None,
        "processes": launch.processes, "parallelism": launch.parallelism,
        "recipe_processes": launch.recipe_processes,
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


def global_batch_note(plan: dict) -> str | None:
    """When the planned processes differ from the launch the recipe is run with (an accelerate config's
    num_processes, else one process), the global batch they change, in one line; None when they do not."""
    processes, recipe_processes = plan["processes"], plan["recipe_processes"]
    if processes == recipe_processes:
        return None
    per_process = plan["per_device_train_batch_size"] * plan["gradient_accumulation_steps"]
    accumulation = plan["gradient_accumulation_steps"] * recipe_processes / processes
    keep = (f"; --gradient_accumulation_steps {accumulation:.0f} keeps the recipe's"
            if accumulation >= 1 and accumulation == int(accumulation) else "")
    return (f"--processes {processes} changes the recipe's global batch: {per_process} blocks x {processes} "
            f"processes = {per_process * processes:,} blocks ({plan['tokens_per_step']:,} tokens) per step, where "
            f"{recipe_processes} process{'es' if recipe_processes > 1 else ''} "
            f"{'give' if recipe_processes > 1 else 'gives'} {per_process * recipe_processes:,}{keep}")


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
