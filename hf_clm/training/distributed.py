"""Distributed: the parallelism a launch asks for (DDP, FSDP, DeepSpeed) is the one Trainer runs, or
the run stops with one line saying why.

accelerate turns a launch's ``ACCELERATE_USE_FSDP`` (or ``ACCELERATE_USE_DEEPSPEED``) into FSDP only
when the process group is a GPU-like one (MULTI_GPU, MULTI_XPU, ...). On CPU the group is MULTI_CPU
(gloo), and ``AcceleratorState`` then keeps the FSDP plugin out of the state without a word: Trainer
wraps the model in plain DDP and the run looks fine. FSDP2's ``fully_shard`` runs on gloo, so on CPU
the request is honoured here; any other case where the asked-for parallelism did not take effect
is an error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, str_to_bool
from transformers import PreTrainedModel, TrainingArguments

from hf_clm.errors import HfClmError
from hf_clm.training.checkpoints import saved_by_fsdp, sharded_weights


def env_flag(name: str) -> bool:
    return bool(str_to_bool(os.environ.get(name, "false").lower()))


def fsdp_requested(args: TrainingArguments) -> bool:
    return bool(args.fsdp) or env_flag("ACCELERATE_USE_FSDP")


def deepspeed_requested(args: TrainingArguments) -> bool:
    return bool(args.deepspeed) or env_flag("ACCELERATE_USE_DEEPSPEED")


def end_with_the_launcher() -> None:
    """Under a launcher (torchrun, ``accelerate launch``), end this worker when the launcher dies.
    torchrun starts its workers in sessions of their own, so a ``kill -9`` of the launcher's
    process group leaves them training and writing checkpoints; a watchdog thread sees the
    launcher go (this process is re-parented) and ends the worker with SIGTERM."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(LAUNCHER_POLL_SECONDS)
        print(f"hf-clm: error: the launcher (pid {launcher}) is gone; ending worker {os.getpid()}", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hf_clm-launcher-watch", daemon=True).start()


LAUNCHER_POLL_SECONDS = 1.0


def use_cpu_collectives_without_gpu() -> None:
    """Several processes and no GPU (torchrun on CPU), or FSDP asked for on CPU: have accelerate
    use gloo, as ``accelerate launch`` with a MULTI_CPU config does, instead of one lone process
    per rank (FSDP on one CPU process then still shards, over a group of one)."""
    if torch.cuda.is_available():
        return
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or \
        (env_flag("ACCELERATE_USE_FSDP") and "LOCAL_RANK" in os.environ)
    if launched:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def requested_fsdp_version(args: TrainingArguments) -> int:
    if args.fsdp_plugin_args is not None:
        return int(args.fsdp_plugin_args.get("fsdp_version", 2))
    return int(os.environ.get("FSDP_VERSION", "1"))  # accelerate's own default when the launch says nothing


def check_launch(args: TrainingArguments) -> None:
    """Before any data is read: sharding that cannot run in this launch is a one-line error."""
    if fsdp_requested(args) and "LOCAL_RANK" not in os.environ:
        raise HfClmError("FSDP needs a distributed launch: run 'accelerate launch --config_file "
                         "recipes/accelerate/fsdp.yaml -m hf_clm train ...' (or torchrun) instead of a plain process")
    if args.save_only_model and fsdp_requested(args) and requests_sharded_checkpoints(args):
        raise HfClmError("save_only_model leaves out the optimizer state, and FSDP's sharded checkpoints write the "
                         "weights with it: add --fsdp_state_dict_type FULL_STATE_DICT to the launch (each checkpoint "
                         "then holds a model.safetensors) or drop save_only_model")
    if torch.cuda.is_available():
        return
    if fsdp_requested(args) and requested_fsdp_version(args) != 2:
        raise HfClmError("FSDP on CPU needs FSDP2: set fsdp_version: 2 in the accelerate config "
                         "(or pass --fsdp_version 2 to accelerate launch)")
    if deepspeed_requested(args):
        raise HfClmError("DeepSpeed needs CUDA GPUs and none is visible; on CPU launch with "
                         "recipes/accelerate/fsdp.yaml (--mixed_precision no) or cpu-2proc.yaml instead")


def requests_sharded_checkpoints(args: TrainingArguments) -> bool:
    return str(fsdp_plugin(args).state_dict_type).endswith("SHARDED_STATE_DICT")


def check_resume_launch(checkpoint: str | None, args: TrainingArguments) -> None:
    """A checkpoint FSDP saved resumes under FSDP only (with any number of processes)."""
    if checkpoint and saved_by_fsdp(Path(checkpoint)) and not fsdp_requested(args):
        raise HfClmError(f"{checkpoint} was saved by FSDP and resumes under FSDP only: launch with 'accelerate launch "
                         f"--config_file recipes/accelerate/fsdp.yaml' (on CPU add --mixed_precision no), with any "
                         f"number of processes")


def with_tied_weights_aliased(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict gathered from shards holds tied weights (GPT-2's lm_head and wte) as two equal
    copies; alias them again so ``save_pretrained`` writes one, as for an unsharded model."""
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if target in state_dict and source in state_dict and torch.equal(state_dict[target], state_dict[source]):
            state_dict[target] = state_dict[source]
    return state_dict


def fsdp_plugin(args: TrainingArguments) -> FullyShardedDataParallelPlugin:
    """The plugin Trainer would have built: from the recipe's ``fsdp_config``, else from the launch's
    ``FSDP_*`` environment."""
    if args.fsdp_plugin_args is not None:
        return FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    return FullyShardedDataParallelPlugin()


def shard_on_cpu(accelerator: Accelerator, args: TrainingArguments) -> bool:
    """FSDP asked for under a CPU (gloo) process group: make the accelerator's state FSDP. True when done."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_requested(args):
        return False
    plugin = fsdp_plugin(args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # AcceleratorState copies PartialState's type each time it is instantiated again: set both.
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True


def check_parallelism_took_effect(accelerator: Accelerator, args: TrainingArguments) -> None:
    """A launch that asked for FSDP or DeepSpeed and got something else stops here, before training."""
    got = accelerator.state.distributed_type
    if fsdp_requested(args) and got != DistributedType.FSDP:
        raise HfClmError(f"the launch asked for FSDP but accelerate set up {got.value} "
                         f"({accelerator.num_processes} process(es), device {accelerator.device.type}); "
                         f"launch with 'accelerate launch --config_file recipes/accelerate/fsdp.yaml' "
                         f"(on CPU add --mixed_precision no) or drop the FSDP settings")
    if deepspeed_requested(args) and got != DistributedType.DEEPSPEED:
        raise HfClmError(f"the launch asked for DeepSpeed but accelerate set up {got.value} "
                         f"({accelerator.num_processes} process(es), device {accelerator.device.type}); "
                         f"check the accelerate config and the launch command")


def saves_sharded_checkpoints(accelerator: Accelerator) -> bool:
    """FSDP with ``fsdp_state_dict_type: SHARDED_STATE_DICT``: each rank writes its part of a checkpoint."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return plugin is not None and str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")


@contextlib.contextmanager
def loading_in_saved_form(accelerator: Accelerator, checkpoint: str | None) -> Iterator[None]:
    """Under FSDP, load a checkpoint in the form it was saved in (sharded folders or one full file),
    whichever form this launch saves: a run started with the other ``fsdp_state_dict_type`` resumes."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or checkpoint is None:
        yield
        return
    saved_as = "SHARDED_STATE_DICT" if sharded_weights(Path(checkpoint)) else "FULL_STATE_DICT"
    own = plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config
    if str(own[0]).endswith(saved_as):
        yield
        return
    plugin.state_dict_config = plugin.optim_state_dict_config = None
    plugin.set_state_dict_type(saved_as)
    try:
        yield
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = own
