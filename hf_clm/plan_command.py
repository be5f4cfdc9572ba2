"""``hf-clm plan RECIPE``: the command around :mod:`hf_clm.plan`: its flags, the plan as a table or
one JSON object, and a recipe that does not fit the named device as one error line saying by how
much and which change (among gradient checkpointing, FSDP, a smaller per-device batch with more
accumulation) makes it fit."""

from __future__ import annotations

import argparse
from typing import Any

from hf_clm.errors import HfClmError
from hf_clm.figures import byte_size
from hf_clm.plan import (
    DEFAULT_MFU,
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
    planned_device,
    planned_launch,
    with_adapter,
)
from hf_clm.recipe import Recipe

PLAN_USAGE = ("%(prog)s RECIPE [--key value ...] [--processes N] [--accelerate_config PATH] "
              "[--gpu NAME | --gpu_memory_gb X --gpu_tflops Y] [--mfu F] [--json]")
FSDP_PROCESSES = (2, 4, 8, 16, 32, 64)  # tried when one process does not fit


class PlanArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise HfClmError(f"plan: {message}")


def plan_parser() -> argparse.ArgumentParser:
    parser = PlanArgumentParser(
        prog="hf-clm plan", usage=PLAN_USAGE, allow_abbrev=False,
        description="Size a recipe's run without running it: parameters, FLOPs and tokens, memory per device, "
                    "whether it fits a GPU, checkpoint size, time to finish. Nothing is trained or downloaded.",
        epilog="Every other flag is a recipe key, as for 'hf-clm train' (e.g. --per_device_train_batch_size 8 "
               "--gradient_checkpointing true --fsdp full_shard). Memory figures are GiB (2^30 bytes).")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes (GPUs) of the launch (default: the accelerate config's num_processes, else 1)")
    parser.add_argument("--accelerate_config", metavar="PATH", default=None,
                        help="an accelerate config file: its num_processes and distributed_type (FSDP and its "
                             "sharding, DeepSpeed and its zero_stage)")
    parser.add_argument("--deepspeed", metavar="JSON", default=None,
                        help="a DeepSpeed config: its zero_optimization.stage (the deepspeed package is not needed)")
    parser.add_argument("--gpu", default=None, help="the device to check against: " + ", ".join(known_names()))
    parser.add_argument("--gpu_memory_gb", type=float, default=None, help="another device: its memory in GiB")
    parser.add_argument("--gpu_tflops", type=float, default=None, help="another device: its peak dense TFLOP/s")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help="model FLOPs utilisation assumed for the time to finish (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    return parser


def known_names() -> list[str]:
    from hf_clm.plan import known_gpus

    return list(known_gpus())


def recipe_deepspeed(recipe_argv: list[str]) -> Any:
    """The recipe file's deepspeed key: read here, as TrainingArguments would import deepspeed for it."""
    from hf_clm.recipe_parser import read_recipe_yaml, split_recipe_argv

    path, _ = split_recipe_argv(recipe_argv, "plan")
    return read_recipe_yaml(path).get("deepspeed") if path else None


def plan_command(argv: list[str]) -> int:
    from hf_clm.artifacts import json_text
    from hf_clm.recipe_keys import unknown_key_problems
    from hf_clm.recipe_parser import parse_recipe

    args, recipe_argv = plan_parser().parse_known_args(argv)
    device = planned_device(args.gpu, args.gpu_memory_gb, args.gpu_tflops)
    if not 0 < args.mfu <= 1:
        raise HfClmError(f"--mfu must be a fraction in (0, 1], not {args.mfu}")
    if problems := unknown_key_problems(recipe_argv):
        raise HfClmError("; ".join(problems))
    deepspeed = args.deepspeed or recipe_deepspeed(recipe_argv)
    recipe = parse_recipe([*recipe_argv, "--deepspeed", "none"], command="plan")
    launch = planned_launch(recipe, args.processes, args.accelerate_config, deepspeed)
    plan, shape = recipe_plan(recipe, launch, device, args.mfu)
    print(json_text(plan, indent=2) if args.json else plan_table(plan))
    if plan["fits"] is False:
        raise HfClmError(not_fitting_message(plan, shape, device, recipe))
    return 0


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
    from hf_clm.throughput import flops_per_token

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


# ---- the table ----

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def plan_table(plan: dict) -> str:
    memory = plan["memory_per_device"]
    steps = f"{plan['steps']:,} steps = {plan['tokens_total']:,} tokens" if plan["steps"] else \
        "steps depend on the corpus (epochs): give max_steps or max_tokens"
    rows = [
        ("model", plan["model"]),
        ("parameters", f"{plan['parameters']:,} ({plan['trainable_parameters']:,} trainable)"),
        ("launch", (f"{plan['processes']} process{'es' if plan['processes'] > 1 else ''}, {plan['parallelism']}, "
                   f"{plan['precision']}, {plan['optimizer']}, gradient checkpointing "
                   f"{'on' if plan['gradient_checkpointing'] else 'off'}")),
        ("batch", (f"{plan['per_device_train_batch_size']} blocks x {plan['gradient_accumulation_steps']} "
                  f"accumulation x {plan['processes']} of {plan['block_size']:,} tokens")),
        ("tokens", f"{plan['tokens_per_step']:,} per step x {steps}"),
        ("FLOPs per token", f"{plan['flops_per_token']:,.4g}"),
        *((f"  {key.replace('_', ' ')}", byte_size(value)) for key, value in memory.items() if key != "total"),
        ("memory per device", byte_size(memory["total"])),
    ]
    if plan["device"]:
        device = plan["device"]
        rows.append(("device", (f"{device['name']}: {gib(device['memory_bytes'])}, {gib(device['usable_bytes'])} "
                               f"usable -> {'fits' if plan['fits'] else 'does NOT fit'}")))
    rows.append(("checkpoint", f"{byte_size(plan['checkpoint_bytes'])} per checkpoint folder"))
    if plan["peak_flops_per_device"]:
        rows.append(("time to finish", (f"{duration(plan['seconds_to_finish'])} at {plan['mfu']:.0%} MFU of "
                                       f"{plan['peak_flops_per_device'] / 1e12:,.0f} TFLOP/s x {plan['processes']}")))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
