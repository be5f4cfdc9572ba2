"""Trainer: ``transformers.Trainer`` with exact token-weighted evaluation and throughput in its logs."""

from __future__ import annotations

import numpy as np
import torch
from datasets import IterableDataset
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, EvalPrediction, PreTrainedModel, Trainer

from hf_clm.evaluation import perplexity_from_loss, row_nll_and_targets
from hf_clm.prepare import TrainingData
from hf_clm.recipe import Recipe
from hf_clm.throughput import ThroughputMeter, flops_per_token, total_peak_flops


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

def block_nll_and_tokens(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per block: [summed NLL of its targets, number of targets] (labels shifted as in the model)."""
    nll, targets = row_nll_and_targets(logits, labels)
    return torch.stack([nll, targets.float()], dim=1)

def token_weighted_loss(prediction: EvalPrediction) -> dict[str, float]:
    sums = np.asarray(prediction.predictions, dtype=np.float64).sum(0)
    return {"token_weighted_loss": float(sums[0] / sums[1]), "tokens": int(sums[1])}

def build_trainer(recipe: Recipe, model: PreTrainedModel, data: TrainingData) -> CausalLMTrainer:
    return CausalLMTrainer(
        model=model, args=recipe.training, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=DataCollatorForLanguageModeling(data.tokenizer, mlm=False), processing_class=data.tokenizer,
        flops_per_token=flops_per_token(model, recipe.data.block_size),
        peak_flops=total_peak_flops(recipe.run, recipe.training),
    )

def final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """The evaluation of the final weights: the one logged at the last step, or a fresh one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()
