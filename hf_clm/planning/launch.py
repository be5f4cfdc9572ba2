"""The launch and the device a plan sizes: how many processes, how they share the model (DDP, FSDP,
DeepSpeed ZeRO), and the GPU checked against; read from plan's flags, the recipe and an accelerate or
DeepSpeed config. A value in them that plan cannot size (a process count that is no positive integer,
a ZeRO stage left ``auto``, a config that is not a mapping, an infinite device) is one error line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.checks import FSDP_AND_DEEPSPEED
from hf_clm.recipe.schema import Recipe
from hf_clm.run.gpus import GPUS, gpus_with_memory
from hf_clm.training.throughput import flops_from_tflops

USABLE_FRACTION = 0.9  # of a device's memory; the rest: CUDA context, NCCL buffers, fragmentation
GIB = 2**30
ZERO_STAGES = (0, 1, 2, 3)
# Which memory terms each kind of launch divides by the processes.
SHARDED_TERMS = {
    "none": (), "ddp": (), "fsdp full_shard": ("weights", "gradients", "optimizer"),
    "fsdp shard_grad_op": ("gradients", "optimizer"), "deepspeed zero-0": (), "deepspeed zero-1": ("optimizer",),
    "deepspeed zero-2": ("gradients", "optimizer"), "deepspeed zero-3": ("weights", "gradients", "optimizer"),
}


class Launch(NamedTuple):
    processes: int
    parallelism: str  # a key of SHARDED_TERMS
    activation_checkpointing: bool = False  # asked for by an FSDP accelerate config
    recipe_processes: int = 1  # the launch the recipe is run with: the accelerate config's, else one process

    def sharded(self, term: str) -> bool:
        return term in SHARDED_TERMS[self.parallelism]


class Device(NamedTuple):
    name: str
    memory_bytes: int
    peak_flops: float | None

    def usable_bytes(self) -> int:
        return int(self.memory_bytes * USABLE_FRACTION)


# ---- the device ----

def known_gpus() -> dict[str, Any]:
    return gpus_with_memory()


def normalized(name: str) -> str:
    name = name.lower().replace("nvidia", "").replace("geforce", "")
    return "".join(c for c in name if c.isalnum())


def named_device(name: str) -> Device:
    gpus = {normalized(key): (key, gpu) for key, gpu in GPUS.items()}
    key, gpu = gpus.get(normalized(name), (None, None)) if normalized(name) else (None, None)
    if gpu is None or not gpu.memory_bytes:
        sizes = [k for k in known_gpus() if k.startswith(key + " ")] if key else []
        hint = f"{key} comes in several sizes: name one of {', '.join(sizes)}" if sizes else \
            f"unknown --gpu {name!r}; known: {', '.join(known_gpus())}"
        raise HfClmError(f"{hint} (or give --gpu_memory_gb X --gpu_tflops Y)")
    return Device(key, gpu.memory_bytes, gpu.peak_bf16_flops)


def planned_device(gpu: str | None, memory_gb: float | None, tflops: float | None) -> Device | None:
    """The device named by --gpu, or described by --gpu_memory_gb (and --gpu_tflops); None for none."""
    if gpu is not None and (memory_gb is not None or tflops is not None):
        raise HfClmError("give --gpu NAME or --gpu_memory_gb X --gpu_tflops Y, not both")
    if gpu is not None:
        return named_device(gpu)
    if memory_gb is None:
        if tflops is not None:
            raise HfClmError("--gpu_tflops needs --gpu_memory_gb (the device's memory in GiB)")
        return None
    for flag, value in (("--gpu_memory_gb", memory_gb), ("--gpu_tflops", tflops)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise HfClmError(f"{flag} must be a finite number > 0, not {value:g}")
    return Device(f"{memory_gb:g} GiB device", int(memory_gb * GIB), flops_from_tflops(tflops))


# ---- an accelerate config ----

def read_accelerate_config(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise HfClmError(f"--accelerate_config {path}: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise HfClmError(f"--accelerate_config {path} is not an accelerate config (a mapping of keys)")
    return config


def config_section(config: dict, key: str, path: str) -> dict:
    section = config.get(key) or {}
    if not isinstance(section, dict):
        raise HfClmError(f"--accelerate_config {path}: {key} must be a mapping of {key.split('_')[0]} settings, "
                         f"not {section!r}")
    return section


def accelerate_processes(config: dict, path: str | None) -> int | None:
    """The config's num_processes (None when it has none); anything but a positive integer is refused."""
    value = config.get("num_processes")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HfClmError(f"--accelerate_config {path}: num_processes must be an integer of at least 1, not {value!r}")
    return value


def accelerate_parallelism(config: dict, path: str | None) -> tuple[str | None, bool]:
    """(parallelism, activation checkpointing) of an accelerate config file's distributed_type."""
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind == "FSDP":
        fsdp = config_section(config, "fsdp_config", path)
        strategy = str(fsdp.get("fsdp_sharding_strategy", "")).upper()
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        grad_op = strategy in ("SHARD_GRAD_OP", "2") or str(reshard).upper() in ("FALSE", "SHARD_GRAD_OP")
        no_shard = strategy in ("NO_SHARD", "3")
        parallelism = "ddp" if no_shard else "fsdp shard_grad_op" if grad_op else "fsdp full_shard"
        return parallelism, bool(fsdp.get("fsdp_activation_checkpointing", False))
    if kind == "DEEPSPEED":
        deepspeed = config_section(config, "deepspeed_config", path)
        if deepspeed.get("deepspeed_config_file"):
            return f"deepspeed zero-{zero_stage(deepspeed['deepspeed_config_file'])}", False
        stage = checked_stage(deepspeed.get("zero_stage", 0), f"--accelerate_config {path}: zero_stage")
        return f"deepspeed zero-{stage}", False
    return None, False


# ---- a DeepSpeed config ----

def checked_stage(value: Any, where: str) -> int:
    if isinstance(value, bool) or value not in ZERO_STAGES:
        raise HfClmError(f"{where} must be 0, 1, 2 or 3, not {value!r} (plan sizes the ZeRO stage the run uses: "
                         f"give it)")
    return int(value)


def deepspeed_name(deepspeed: str | dict) -> str:
    if isinstance(deepspeed, dict):
        return "the recipe's deepspeed"
    return "inline JSON" if deepspeed.lstrip().startswith(("{", "[")) else deepspeed


def deepspeed_config(deepspeed: str | dict) -> dict:
    """A DeepSpeed config given as a JSON file, inline JSON or (a recipe's ``deepspeed`` key) a mapping."""
    if isinstance(deepspeed, dict):
        return deepspeed
    name = deepspeed_name(deepspeed)
    try:
        config = json.loads(deepspeed if name == "inline JSON" else Path(deepspeed).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HfClmError(f"deepspeed config {name}: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise HfClmError(f"deepspeed config {name} is a JSON {type(config).__name__}, not an object of DeepSpeed "
                         f"settings")
    return config


def zero_stage(deepspeed: str | dict) -> int:
    """The ZeRO stage of a DeepSpeed config (a JSON file, inline JSON or a dict)."""
    where = f"deepspeed config {deepspeed_name(deepspeed)}: zero_optimization"
    optimization = deepspeed_config(deepspeed).get("zero_optimization") or {}
    if not isinstance(optimization, dict):
        raise HfClmError(f"{where} must be an object of ZeRO settings, not {optimization!r}")
    return checked_stage(optimization.get("stage", 0), f"{where}.stage")


# ---- the launch ----

def recipe_fsdp(recipe: Recipe) -> str | None:
    args = recipe.training_args
    if not args.fsdp:
        return None
    options = {str(getattr(o, "value", o)) for o in args.fsdp} if isinstance(args.fsdp, (list, tuple)) else set()
    if "no_shard" in options:
        return "ddp"
    reshard = (args.fsdp_config or {}).get("reshard_after_forward", True)
    grad_op = options & {"shard_grad_op", "hybrid_shard_zero2"} or str(reshard).lower() in ("false", "shard_grad_op")
    return "fsdp shard_grad_op" if grad_op else "fsdp full_shard"


def planned_launch(recipe: Recipe, processes: int | None, accelerate_config: str | None,
                   deepspeed: Any) -> Launch:
    """Processes: --processes, else the accelerate config's num_processes, else 1. Parallelism: the
    recipe's deepspeed (its ZeRO stage) or fsdp (not both), else the accelerate config's, else DDP over
    several processes."""
    if processes is not None and processes < 1:
        raise HfClmError(f"--processes must be at least 1, not {processes}")
    config = read_accelerate_config(accelerate_config) if accelerate_config else {}
    configured = accelerate_processes(config, accelerate_config)
    processes = processes or configured or 1
    parallelism, checkpointing = accelerate_parallelism(config, accelerate_config)
    fsdp = recipe_fsdp(recipe)
    if fsdp and deepspeed:
        raise HfClmError(f"invalid recipe: {FSDP_AND_DEEPSPEED}")
    if deepspeed:
        parallelism = f"deepspeed zero-{zero_stage(deepspeed)}"
    parallelism = fsdp or parallelism or ("ddp" if processes > 1 else "none")
    return Launch(processes, parallelism, checkpointing, configured or 1)
