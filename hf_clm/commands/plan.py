"""``hf-clm plan RECIPE``: the command around :mod:`hf_clm.planning.plan`: its flags, the plan as a table or
one JSON object, and a recipe that does not fit the named device as one error line saying by how
much and which change (among gradient checkpointing, FSDP, a smaller per-device batch with more
accumulation) makes it fit."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from hf_clm.errors import HfClmError
from hf_clm.run.figures import byte_size
from hf_clm.run.verbosity import quiet_libraries

logger = logging.getLogger("hf_clm")

HELP = "size a recipe's run without running it: parameters, memory per device, fit, checkpoint, time"
PLAN_USAGE = ("%(prog)s RECIPE [--key value ...] [--processes N] [--accelerate_config PATH] "
              "[--gpu NAME | --gpu_memory_gb X --gpu_tflops Y] [--mfu F] [--json]")


class PlanArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise HfClmError(f"plan: {message}")


def parser() -> argparse.ArgumentParser:
    from hf_clm.run.gpus import DEFAULT_MFU

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
    from hf_clm.run.gpus import gpus_with_memory

    return list(gpus_with_memory())


def recipe_deepspeed(recipe_argv: list[str]) -> Any:
    """The recipe file's deepspeed key: read here, as TrainingArguments would import deepspeed for it."""
    from hf_clm.recipe.parser import split_recipe_argv
    from hf_clm.recipe.yaml_file import read_recipe_yaml

    path, _ = split_recipe_argv(recipe_argv, "plan")
    return read_recipe_yaml(path).get("deepspeed") if path else None


def main(argv: list[str], verbose: bool = False) -> int:
    args, recipe_argv = parser().parse_known_args(argv)  # --help: printed before any library is imported
    quiet_libraries(verbose)
    from hf_clm.planning.launch import planned_device, planned_launch
    from hf_clm.planning.plan import global_batch_note, not_fitting_message, recipe_plan
    from hf_clm.recipe.keys import unknown_key_problems
    from hf_clm.recipe.parser import flag_names, parse_recipe
    from hf_clm.run.artifacts import json_text

    device = planned_device(args.gpu, args.gpu_memory_gb, args.gpu_tflops)
    if not 0 < args.mfu <= 1:
        raise HfClmError(f"--mfu must be a fraction in (0, 1], not {args.mfu}")
    if problems := unknown_key_problems(recipe_argv):
        raise HfClmError("; ".join(problems))
    deepspeed = args.deepspeed or recipe_deepspeed(recipe_argv)
    recipe = parse_recipe([*recipe_argv, "--deepspeed", "none"], command="plan")
    launch = planned_launch(recipe, args.processes, args.accelerate_config, deepspeed)
    vocab_size = recipe.model_args.vocab_size if "vocab_size" in flag_names(recipe_argv) else None
    plan, shape = recipe_plan(recipe, launch, device, args.mfu, vocab_size)
    if args.processes is not None and (note := global_batch_note(plan)):
        logger.warning("plan: %s", note)
    print(json_text(plan, indent=2) if args.json else plan_table(plan))
    if plan["fits"] is False:
        raise HfClmError(not_fitting_message(plan, shape, device, recipe))
    return 0


def length_rows(plan: dict) -> list[tuple[str, str]]:
    """The tokens and time-to-finish rows: a time budget's steps and tokens are estimates ("~") at
    the plan's throughput, its time is the budget."""
    from hf_clm.planning.plan import duration
    from hf_clm.training.throughput import TERA

    steps, budget = plan["steps"], plan["time_budget_seconds"]
    speed = (f"at {plan['mfu']:.0%} MFU of {plan['peak_flops_per_device'] / TERA:,.0f} TFLOP/s x {plan['processes']}"
             if plan["peak_flops_per_device"] else None)
    if budget is not None:
        length = (f"~{steps:,} steps = ~{plan['tokens_total']:,} tokens (estimates: the {budget:g} s time budget "
                  f"{speed})" if steps else f"as many steps as the {budget:g} s time budget holds (give --gpu or "
                  f"peak_tflops for an estimate)")
        time = f"{duration(budget)} (the max_train_seconds budget)"
    else:
        length = f"{steps:,} steps = {plan['tokens_total']:,} tokens" if steps else \
            "steps depend on the corpus (epochs): give max_steps or max_tokens"
        time = f"{duration(plan['seconds_to_finish'])} {speed}" if speed else None
    rows = [("tokens", f"{plan['tokens_per_step']:,} per step x {length}")]
    return rows + ([("time to finish", time)] if time else [])


def plan_table(plan: dict) -> str:
    from hf_clm.planning.plan import gib

    memory = plan["memory_per_device"]
    tokens, *time = length_rows(plan)
    rows = [
        ("model", plan["model"]),
        ("parameters", f"{plan['parameters']:,} ({plan['trainable_parameters']:,} trainable)"),
        ("launch", (f"{plan['processes']} process{'es' if plan['processes'] > 1 else ''}, {plan['parallelism']}, "
                   f"{plan['precision']}, {plan['optimizer']}, gradient checkpointing "
                   f"{'on' if plan['gradient_checkpointing'] else 'off'}")),
        ("batch", (f"{plan['per_device_train_batch_size']} blocks x {plan['gradient_accumulation_steps']} "
                  f"accumulation x {plan['processes']} of {plan['block_size']:,} tokens")),
        tokens,
        ("FLOPs per token", f"{plan['flops_per_token']:,.4g}"),
        *((f"  {key.replace('_', ' ')}", byte_size(value)) for key, value in memory.items() if key != "total"),
        ("memory per device", byte_size(memory["total"])),
    ]
    if plan["device"]:
        device = plan["device"]
        rows.append(("device", (f"{device['name']}: {gib(device['memory_bytes'])}, {gib(device['usable_bytes'])} "
                               f"usable -> {'fits' if plan['fits'] else 'does NOT fit'}")))
    rows += [("checkpoint", f"{byte_size(plan['checkpoint_bytes'])} per checkpoint folder"), *time]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
