"""Train: the whole pipeline, recipe -> corpus -> tokenizer -> blocks -> Trainer -> perplexity."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset
from torch.utils.data import DataLoader
from transformers import (DataCollatorForLanguageModeling, EvalPrediction, PreTrainedModel, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_clm.blocks import TokenCounts, save_token_counts
from hf_clm.errors import HfClmError
from hf_clm.hub import PushTarget, check_hub_access, push_run
from hf_clm.model import build_model, context_length, merge_adapter
from hf_clm.perplexity import perplexity_from_loss, row_nll_and_targets, unigram_nll
from hf_clm.prepare import TrainingData, training_data
from hf_clm.recipe import Recipe, RunArguments, save_recipe
from hf_clm.report import write_report

logger = logging.getLogger(__name__)

PERPLEXITY_FILENAME = "perplexity.json"


class CausalLMTrainer(Trainer):
    """``Trainer`` whose evaluations report the exact token-weighted loss and ``eval_perplexity``,
    and whose training logs carry throughput (``tokens_per_second``, all ranks) and ``mfu``.

    Trainer's own ``eval_loss`` is not token-weighted: its evaluation loop repeats each batch's
    mean loss by the *first* batch's size, so a short last batch weighs as much as a full one.
    Instead each block's summed NLL and target count travel through ``preprocess_logits_for_metrics``
    (so full logits are never kept) and ``compute_metrics`` divides the totals.
    """

    def __init__(self, *args, flops_per_token: float, peak_flops: float | None, **kwargs):
        super().__init__(*args, preprocess_logits_for_metrics=block_nll_and_tokens,
                         compute_metrics=token_weighted_loss, **kwargs)
        self.meter = ThroughputMeter(flops_per_token, peak_flops)
        self.add_callback(self.meter)

    def evaluate(self, *args, **kwargs):
        with self.meter.paused():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, *args, **kwargs):
        with self.meter.paused():
            return super()._save_checkpoint(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_token_weighted_loss" in logs:
            logs["eval_loss"] = logs.pop("eval_token_weighted_loss")
            logs["eval_perplexity"] = perplexity_from_loss(logs["eval_loss"])
        elif "loss" in logs:
            logs.update(self.meter.interval(self.state.num_input_tokens_seen))
        super().log(logs, start_time)

    def get_train_dataloader(self) -> DataLoader:
        if not (isinstance(self.train_dataset, IterableDataset) and self.args.world_size > 1):
            return super().get_train_dataloader()
        # Already split across ranks by split_dataset_by_node: accelerate's prepare() would
        # either send rank 0's batches everywhere or split each rank's part once more.
        return EpochDataLoader(self.train_dataset, batch_size=self._train_batch_size,
                               collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                               pin_memory=self.args.dataloader_pin_memory)


class EpochDataLoader(DataLoader):
    """A DataLoader that passes Trainer's ``set_epoch`` on to its dataset (a new shuffle per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class ThroughputMeter(TrainerCallback):
    """Training tokens per second between two logs, time spent evaluating and saving left out."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.last_time, self.last_tokens, self.excluded = time.perf_counter(), 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens, self.excluded = time.perf_counter(), state.num_input_tokens_seen, 0.0

    @contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def interval(self, tokens_seen: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = now - self.last_time - self.excluded
        rate = (tokens_seen - self.last_tokens) / seconds if seconds > 0 else 0.0
        self.last_time, self.last_tokens, self.excluded = now, tokens_seen, 0.0
        figures = {"tokens_per_second": rate}
        if self.peak_flops:
            figures["mfu"] = rate * self.flops_per_token / self.peak_flops
        return figures


# Peak dense bf16 tensor-core FLOP/s of one device, from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def device_peak_flops(run: RunArguments, device: torch.device) -> float | None:
    """Peak FLOP/s of one training device: the recipe's ``peak_tflops``, or a known GPU's figure."""
    if run.peak_tflops:
        return run.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def total_peak_flops(run: RunArguments, args: TrainingArguments) -> float | None:
    per_device = device_peak_flops(run, args.device)
    return per_device * args.world_size if per_device else None


def block_nll_and_tokens(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per block: [summed NLL of its targets, number of targets] (labels shifted as in the model)."""
    nll, targets = row_nll_and_targets(logits, labels)
    return torch.stack([nll, targets.float()], dim=1)


def token_weighted_loss(prediction: EvalPrediction) -> dict[str, float]:
    sums = np.asarray(prediction.predictions, dtype=np.float64).sum(0)
    return {"token_weighted_loss": float(sums[0] / sums[1]), "tokens": int(sums[1])}


def check_blocks(counts: dict[str, TokenCounts], block_size: int) -> None:
    for name, count in counts.items():
        if count.blocks == 0:
            raise HfClmError(f"the {name} split has {count.tokens} tokens, fewer than one block of "
                             f"{block_size}; lower block_size or add text")


def check_fills_a_step(counts: dict[str, TokenCounts], args: TrainingArguments) -> None:
    """An optimizer step takes batch x accumulation x processes blocks; the corpus must fill one."""
    if "train" not in counts:
        return
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if counts["train"].blocks < per_step:
        raise HfClmError(
            f"the train split has {counts['train'].blocks} blocks, fewer than one optimizer step takes "
            f"({args.per_device_train_batch_size} per_device_train_batch_size x {args.gradient_accumulation_steps} "
            f"gradient_accumulation_steps x {args.world_size} processes = {per_step}): training would make zero "
            f"steps; lower the batch size or accumulation, or add text")


def flops_per_token(model: PreTrainedModel, block_size: int) -> float:
    """Training FLOPs per token, as in the PaLM paper's MFU: 6 per weight (forward + backward)
    plus attention's 12 x layers x hidden x context (position embeddings are lookups, not matmuls)."""
    config = model.config
    positions = model.get_input_embeddings().weight.shape[1] * context_length(config) \
        if getattr(config, "n_positions", None) else 0
    weights = model.num_parameters() - positions
    return 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * block_size


def build_trainer(recipe: Recipe, model: PreTrainedModel, data: TrainingData) -> CausalLMTrainer:
    return CausalLMTrainer(
        model=model, args=recipe.training, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=DataCollatorForLanguageModeling(data.tokenizer, mlm=False), processing_class=data.tokenizer,
        flops_per_token=flops_per_token(model, recipe.data.block_size),
        peak_flops=total_peak_flops(recipe.run, recipe.training),
    )


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint written to the end: Trainer writes ``trainer_state.json`` after the weights,
    optimizer, scheduler and RNG states, so a folder cut short by a crash lacks it or a part."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return has_weights and all((path / name).is_file() for name in ("optimizer.pt", "scheduler.pt")) \
        and any(path.glob("rng_state*.pth"))


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    for path in reversed(checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning("Skipping %s: an incomplete checkpoint (interrupted while saving)", path)
    return None


def resume_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint: auto`` -> the newest complete one
    in output_dir (none: start fresh); a path -> that checkpoint, which must be complete."""
    wanted = args.resume_from_checkpoint
    if not wanted:
        return None
    if wanted == "auto":
        found = newest_complete_checkpoint(Path(args.output_dir))
        logger.info("Resuming from %s" if found else "No complete checkpoint in %s: starting fresh",
                    found or args.output_dir)
        return str(found) if found else None
    path = Path(wanted)
    if not path.is_dir():
        raise HfClmError(f"resume_from_checkpoint {wanted} does not exist; give a checkpoint folder or 'auto'")
    if not is_complete_checkpoint(path):
        raise HfClmError(f"resume_from_checkpoint {wanted} is not a complete checkpoint (trainer_state.json, "
                         f"weights, optimizer.pt, scheduler.pt, rng_state*.pth); give another or 'auto'")
    return str(path)


def check_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to train over a finished run or someone's checkpoints unless asked to."""
    if overwrite:
        return
    finished = (output_dir / PERPLEXITY_FILENAME).is_file()
    found = checkpoints(output_dir) if output_dir.is_dir() else []
    if finished and resume is None:
        raise HfClmError(f"output_dir {output_dir} holds a finished run; choose another output_dir or set "
                         f"overwrite_output_dir: true to replace it")
    if found and resume is None:
        raise HfClmError(f"output_dir {output_dir} holds checkpoints ({found[-1].name}); set "
                         f"resume_from_checkpoint: auto to continue, or overwrite_output_dir: true to start over")


def clear_previous_run(output_dir: Path) -> None:
    """overwrite_output_dir: drop the old checkpoints and the finished-run marker (the rest is rewritten)."""
    for path in checkpoints(output_dir) if output_dir.is_dir() else []:
        shutil.rmtree(path)
    (output_dir / PERPLEXITY_FILENAME).unlink(missing_ok=True)


def final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """The evaluation of the final weights: the one logged at the last step, or a fresh one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


def training_throughput(trainer: Trainer) -> dict[str, float]:
    """Mean tokens/s and MFU over the training logs (evaluation and saving left out)."""
    logs = [e for e in trainer.state.log_history if "tokens_per_second" in e]
    if not logs:
        return {}
    figures = {"train_tokens_per_second": float(np.mean([e["tokens_per_second"] for e in logs]))}
    if all("mfu" in e for e in logs):
        figures["mfu"] = float(np.mean([e["mfu"] for e in logs]))
    return figures


def perplexity_summary(metrics: dict[str, float], model: PreTrainedModel, data: TrainingData,
                       tokens_seen: int, unigram_perplexity: float | None) -> dict[str, Any]:
    # bits per byte: the mean loss in bits, per UTF-8 byte a validation token stands for on average
    bytes_per_token = data.validation_bytes / data.counts["validation"].tokens
    return {
        "perplexity": metrics["eval_perplexity"],
        "eval_loss": metrics["eval_loss"],
        "bits_per_byte": metrics["eval_loss"] / math.log(2) / bytes_per_token,
        "eval_tokens": metrics["eval_tokens"],
        "unigram_perplexity": unigram_perplexity,
        "parameters": model.num_parameters(),
        "trainable_parameters": trainable_parameters(model),
        "train_tokens_seen": tokens_seen,
        "block_size": data.counts["validation"].block_size,
    }


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def use_cpu_collectives_without_gpu() -> None:
    """Several processes and no GPU (torchrun on CPU): have accelerate use gloo, as
    ``accelerate launch`` with a MULTI_CPU config does, instead of one lone process per rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def hub_push_target(args: TrainingArguments) -> tuple[PushTarget, str] | None:
    """With push_to_hub: the repo and token, checked now rather than after training. The push
    itself happens once, at the end, with the package's model card, so Trainer does not push."""
    if not args.push_to_hub:
        return None
    repo_id, token = check_hub_access(args.hub_model_id, args.hub_token)
    args.push_to_hub, args.hub_token = False, None  # the token lives in this frame only, never in training_args.bin
    return PushTarget(repo_id, private=bool(args.hub_private_repo), revision=args.hub_revision), token


def trainable_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(recipe: Recipe) -> dict[str, Any]:
    """Train the recipe's model and write model, tokenizer and ``perplexity.json`` to output_dir."""
    args = recipe.training
    output_dir = Path(args.output_dir)
    resume = resume_checkpoint(args)
    check_output_dir(output_dir, resume, recipe.run.overwrite_output_dir)
    push = hub_push_target(args)
    if recipe.run.overwrite_output_dir and args.should_save:
        clear_previous_run(output_dir)
    set_seed(args.seed)
    # Under several processes the main one tokenizes and caches; the others then read its cache.
    with args.main_process_first(desc="corpus preparation"):
        data = training_data(recipe)
    check_blocks(data.counts, recipe.data.block_size)
    check_fills_a_step(data.counts, args)
    model = build_model(recipe.model, data.tokenizer, recipe.data.block_size, data.added_tokens)

    if args.should_save:
        save_recipe(recipe, output_dir)
        save_token_counts(data.counts, output_dir)
    trainer = build_trainer(recipe, model, data)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    metrics = final_eval_metrics(trainer)
    unigram = None if data.streamed else \
        unigram_nll(data.train, data.validation, len(data.tokenizer)).perplexity
    summary = perplexity_summary(metrics, model, data, trainer.state.num_input_tokens_seen, unigram)
    summary.update(training_throughput(trainer))
    if trainer.is_world_process_zero():
        if recipe.run.merge_adapter:
            merge_adapter(output_dir)
        write_json(summary, output_dir / PERPLEXITY_FILENAME)
        write_report([output_dir], output_dir)
        print(format_summary(summary, output_dir))
        if push:
            print(f"pushed to              {push_run(output_dir, *push)}")
    return summary


def format_summary(summary: dict[str, Any], output_dir: Path) -> str:
    lines = [
        f"validation perplexity  {summary['perplexity']:.2f}  (eval loss {summary['eval_loss']:.4f} nats/token,"
        f" {summary['eval_tokens']:,} tokens)",
        f"bits per byte          {summary['bits_per_byte']:.4f}",
    ]
    if summary["unigram_perplexity"] is not None:
        ratio = summary["unigram_perplexity"] / summary["perplexity"]
        lines.append(f"unigram baseline       {summary['unigram_perplexity']:.2f}  (model is {ratio:.1f}x lower)")
    trainable = summary.get("trainable_parameters", summary["parameters"])
    lines += [f"parameters             {summary['parameters']:,}"
              + (f" ({trainable:,} trainable)" if trainable != summary["parameters"] else ""),
              f"train tokens seen      {summary['train_tokens_seen']:,}"]
    if "train_tokens_per_second" in summary:
        mfu = f", MFU {summary['mfu']:.1%}" if "mfu" in summary else ""
        lines.append(f"throughput             {summary['train_tokens_per_second']:,.0f} tokens/s{mfu}")
    lines.append(f"saved to               {output_dir}")
    return "\n".join(lines)
