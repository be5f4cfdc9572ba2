"""Rehearsal (``hf-clm train RECIPE --rehearse K``): the recipe's run tried out on the machine at hand.

K optimizer steps of the recipe's real model, per-device batch and block on the head of its local
data, a checkpoint at step K, a second Trainer on a freshly built model resumed from that checkpoint
(``resume_from_checkpoint``) for one more step, one evaluation of a few batches, then the measured
step time and peak memory beside :mod:`hf_clm.planning.memory`'s figures for the same shapes on this device.

It writes only into ``OUTPUT_DIR-rehearsal`` (replaced by the next rehearsal), never a finished-run
marker, a report, a final model or a Hub push, so a later real run in output_dir is not confused.

Two stages: :func:`hf_clm.planning.rehearsal_values.rehearsal_values` rewrites the parsed recipe
values before Trainer's arguments are built (TrainingArguments itself refuses tf32 without CUDA);
:func:`rehearse`, here, is the run.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import SaveStrategy

from hf_clm.errors import HfClmError
from hf_clm.planning.rehearsal_values import REHEARSAL_SUFFIX
from hf_clm.run.artifacts import write_json
from hf_clm.run.figures import byte_size, fmt
from hf_clm.run.files import LOCK_FILENAME, PERPLEXITY_FILENAME, REHEARSAL_FILENAME, TRAINER_STATE
from hf_clm.training.record import cpu_model
from hf_clm.training.throughput import TERA

logger = logging.getLogger(__name__)

EVAL_BATCHES = 2
GIB = 2**30


# ---- the run ----

class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (data loading included), from the start of training on."""

    def __init__(self):
        self.seconds: list[float] = []
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def rehearse(recipe) -> dict[str, Any]:
    """Run the rehearsal, print its table and return its figures (also in ``rehearsal.json``)."""
    from hf_clm.data.sources import check_hub_sources
    from hf_clm.model.build import check_4bit_possible
    from hf_clm.run.locks import folder_lock

    args = recipe.training_args
    if args.world_size > 1:
        raise HfClmError(f"rehearse measures one device: start it without a launcher (this launch has "
                         f"{args.world_size} processes)")
    check_hub_sources(recipe.model_args, recipe.data_args)
    check_4bit_possible(recipe.model_args)
    device = this_device(recipe)
    plan = fitted_plan(recipe, device)
    with folder_lock(args.output_dir, "the rehearsal folder"):
        return rehearse_in(recipe, device, plan)


def rehearse_in(recipe, device, plan: dict) -> dict[str, Any]:
    from hf_clm.data.prepare import training_data
    from hf_clm.training.train import check_blocks, check_fills_a_step

    args, folder = recipe.training_args, Path(recipe.training_args.output_dir)
    start_rehearsal_folder(folder, args.max_steps)
    set_seed(args.seed)
    data = training_data(recipe)
    check_blocks(data.counts, recipe.data_args.block_size)
    check_fills_a_step(data.counts, recipe)
    eval_blocks = cap_evaluation(data, args.per_device_eval_batch_size)
    before = memory_before_training()
    steps, checkpoint = train_first_steps(recipe, data)
    trainer, resumed = train_resumed_step(recipe, data, checkpoint)
    peak = peak_training_memory()
    metrics = trainer.evaluate()
    trainer.save_state()  # trainer_state.json: the step the resumed Trainer reached
    figures = rehearsal_figures(recipe, device, plan, (steps, resumed), (before, peak))
    figures.update(checkpoint=checkpoint.name, checkpoint_step=checkpoint_step(checkpoint),
                   resumed_to_step=trainer.state.global_step, eval_blocks=eval_blocks,
                   eval_loss=metrics.get("eval_loss"), eval_perplexity=metrics.get("eval_perplexity"))
    write_json(figures, folder / REHEARSAL_FILENAME)
    print(rehearsal_table(figures))
    return figures


def this_device(recipe):
    """The device the rehearsal trains on, as :mod:`hf_clm.planning.memory` sees one: its name, the memory it
    has free now, its peak FLOP/s (a known GPU's, or the recipe's ``peak_tflops``)."""
    from hf_clm.model.build import default_device
    from hf_clm.planning.launch import Device
    from hf_clm.training.throughput import device_peak_flops

    name = default_device()
    peak = device_peak_flops(recipe.run_args, torch.device(name))
    if name == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return Device(torch.cuda.get_device_name(), free, peak)
    if name == "cpu" and (model := cpu_model()):
        name = f"cpu ({model}, {torch.get_num_threads()} threads)"
    return Device(name, available_memory(), peak)


def available_memory() -> int:
    """Memory the rehearsal may take: MemAvailable (free plus reclaimable cache), else all of it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def rehearsal_plan(recipe, device) -> tuple[dict, Any]:
    """``hf-clm plan``'s figures for one process of the recipe as rehearsed, on ``device``."""
    from hf_clm.planning.launch import planned_launch
    from hf_clm.planning.plan import recipe_plan
    from hf_clm.run.gpus import DEFAULT_MFU

    launch = planned_launch(recipe, 1, None, None)
    return recipe_plan(recipe, launch, device, DEFAULT_MFU)


def fitted_plan(recipe, device) -> dict:
    """The plan of the batch the rehearsal trains: the recipe's per-device batch, or, when the plan
    puts it over this device's memory, the largest that fits (one line says so; none fitting is an
    error). The evaluation batch is lowered to the training batch where it is larger."""
    from hf_clm.planning.plan import gib, total_bytes

    plan, shape = rehearsal_plan(recipe, device)
    args, usable = recipe.training_args, device.usable_bytes()
    if not plan["fits"]:
        batch = next((b for b in range(shape.batch - 1, 0, -1) if total_bytes(shape._replace(batch=b)) <= usable),
                     None)
        needs = f"the plan puts per_device_train_batch_size {shape.batch} at {gib(plan['memory_per_device']['total'])}"
        if batch is None:
            smallest = "" if shape.batch == 1 else f", and {gib(total_bytes(shape._replace(batch=1)))} at 1"
            raise HfClmError(f"the rehearsal does not fit {device.name}: {needs}{smallest}, over the {gib(usable)} "
                             f"usable (90% of the {gib(device.memory_bytes)} free); rehearse on a larger machine, or "
                             f"try --gradient_checkpointing true or a smaller block_size")
        logger.warning("rehearsal on %s: %s, over the %s usable here: rehearsing with %d (or give "
                       "--per_device_train_batch_size N)", device.name, needs, gib(usable), batch)
        args.per_device_train_batch_size = batch
        plan = rehearsal_plan(recipe, device)[0]
    # its evaluation batches are no larger than its training batch: they take a fraction of a step
    args.per_device_eval_batch_size = min(args.per_device_eval_batch_size, args.per_device_train_batch_size)
    return plan


def start_rehearsal_folder(folder: Path, steps: int) -> None:
    """The folder emptied of a previous rehearsal (and only of one) and marked as a rehearsal's."""
    found = [p for p in folder.iterdir() if p.name != LOCK_FILENAME]
    if found and not (folder / REHEARSAL_FILENAME).is_file():
        names = ", ".join(sorted(p.name for p in found)[:3])
        raise HfClmError(f"{folder} holds files a rehearsal did not write ({names}); move them, or choose another "
                         f"output_dir (a rehearsal writes to OUTPUT_DIR{REHEARSAL_SUFFIX})")
    for path in found:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    write_json({"steps": steps, "finished": False}, folder / REHEARSAL_FILENAME)


def cap_evaluation(data, batch: int) -> int:
    """The validation blocks (and each named set's) cut to EVAL_BATCHES batches; the blocks evaluated."""
    blocks = batch * EVAL_BATCHES
    data.validation = data.validation.select(range(min(blocks, len(data.validation))))
    data.eval_sets = {name: blocks_set.select(range(min(blocks, len(blocks_set))))
                      for name, blocks_set in data.eval_sets.items()}
    return len(data.validation)


def rehearsal_trainer(recipe, data):
    from hf_clm.model.build import build_model
    from hf_clm.training.trainer import build_trainer

    model = build_model(recipe.model_args, data.tokenizer, recipe.data_args.block_size)
    trainer = build_trainer(recipe, model, data)
    timer = StepTimer()
    trainer.add_callback(timer)
    return trainer, timer


def train_first_steps(recipe, data) -> tuple[list[float], Path]:
    """K steps of a fresh model, checkpoint-K saved; their step times, and the checkpoint."""
    trainer, timer = rehearsal_trainer(recipe, data)
    trainer.train()
    checkpoint = Path(recipe.training_args.output_dir) / f"checkpoint-{trainer.state.global_step}"
    del trainer
    release_memory()
    return timer.seconds, checkpoint


def train_resumed_step(recipe, data, checkpoint: Path):
    """A freshly built model resumed from ``checkpoint`` (weights, optimizer, scheduler, RNG, data
    position) for one more step; the Trainer and that step's time."""
    args = recipe.training_args
    args.max_steps, args.save_strategy = args.max_steps + 1, SaveStrategy.NO
    trainer, timer = rehearsal_trainer(recipe, data)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer, timer.seconds


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- memory: allocated on a GPU, resident (RSS) on a CPU ----

def memory_before_training() -> int:
    """Memory in use before the first model is built; the peak counter restarts here."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    reset_peak_rss()
    return process_status_bytes("VmRSS") or 0


def peak_training_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return process_status_bytes("VmHWM") or max_rss_bytes()


def process_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Linux: restart the peak-RSS counter (VmHWM) at the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---- figures and table ----

def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


def rehearsal_figures(recipe, device, plan: dict, times: tuple[list[float], list[float]],
                      memory: tuple[int, int]) -> dict[str, Any]:
    """Measured beside planned: step time and training memory."""
    args = recipe.training_args
    (steps, resumed), (before, peak) = times, memory
    steady = steps[1:] or steps
    step_seconds = statistics.median(steady)
    plan_step = plan["seconds_to_finish"] / plan["steps"] if plan["seconds_to_finish"] else None
    return {
        "device": device.name, "steps": len(steps), "finished": False,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "block_size": recipe.data_args.block_size,
        "precision": plan["precision"], "tokens_per_step": plan["tokens_per_step"],
        "step_seconds": steps, "resumed_step_seconds": resumed,
        "measured_step_seconds": step_seconds, "measured_from": "steps 2 on" if len(steps) > 1 else
        "step 1, warm-up and any compilation included: rehearse 2 or more steps for a steady step time",
        "plan_step_seconds": plan_step, "plan_mfu": plan["mfu"], "peak_flops": plan["peak_flops_per_device"],
        "measured_tflops": plan["tokens_per_step"] * plan["flops_per_token"] / step_seconds / TERA,
        "memory_kind": "allocated (torch.cuda)" if torch.cuda.is_available() else "resident (RSS)",
        "memory_before_training_bytes": before, "peak_memory_bytes": peak,
        "measured_training_memory_bytes": max(peak - before, 0),
        "plan_memory_bytes": plan["memory_per_device"]["total"], "plan_memory_per_device": plan["memory_per_device"],
        "output_dir": args.output_dir,
    }


def rehearsal_table(figures: dict[str, Any]) -> str:
    """The measured figures beside the plan's, between a line saying what was rehearsed and lines
    saying how each was measured."""
    from hf_clm.planning.plan import duration

    plan_step = (f"{duration(figures['plan_step_seconds'])} at {figures['plan_mfu']:.0%} MFU"
                 if figures["plan_step_seconds"] else "- (no peak FLOP/s for this device: give peak_tflops)")
    rows = [
        ("", "measured", "plan"),
        ("step time", f"{figures['measured_step_seconds']:.2f} s", plan_step),
        ("peak memory", byte_size(figures["measured_training_memory_bytes"]), byte_size(figures["plan_memory_bytes"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    table = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    steps = ", ".join(f"{s:.2f} s" for s in figures["step_seconds"])
    resumed = ", ".join(f"{s:.2f} s" for s in figures["resumed_step_seconds"])
    what = (f"rehearsal on {figures['device']}: {figures['per_device_train_batch_size']} blocks x "
            f"{figures['gradient_accumulation_steps']} accumulation of {figures['block_size']:,} tokens, "
            f"{figures['precision']}")
    times = (f"step times {steps} (measured: {figures['measured_from']}); after the resume {resumed}; "
             f"{figures['measured_tflops']:.3g} TFLOP/s")
    memory = (f"peak memory: {figures['memory_kind']} {byte_size(figures['peak_memory_bytes'])} at its peak, "
              f"{byte_size(figures['memory_before_training_bytes'])} of it in use before the model was built")
    resume = (f"{figures['checkpoint']} written (global_step {figures['checkpoint_step']}) and resumed from to step "
              f"{figures['resumed_to_step']}; evaluation of {figures['eval_blocks']} blocks: loss "
              f"{fmt(figures['eval_loss'], '.4f')}")
    where = f"written to {figures['output_dir']}; nothing marked finished (no {PERPLEXITY_FILENAME}, no push)"
    return "\n".join([what, *table, times, memory, resume, where])
