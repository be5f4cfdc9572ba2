"""Train: the whole pipeline, recipe -> corpus -> tokenizer -> blocks -> Trainer -> perplexity."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, EvalPrediction, PreTrainedModel, Trainer, set_seed

from hf_clm.blocks import TokenCounts, build_blocks, save_token_counts
from hf_clm.corpus import load_corpus
from hf_clm.errors import HfClmError
from hf_clm.model import build_model
from hf_clm.perplexity import perplexity_from_loss, row_nll_and_targets, text_size, unigram_nll
from hf_clm.report import write_report
from hf_clm.recipe import Recipe, save_recipe
from hf_clm.tokenizer import train_or_load_tokenizer

logger = logging.getLogger(__name__)

PERPLEXITY_FILENAME = "perplexity.json"


class CausalLMTrainer(Trainer):
    """``Trainer`` whose evaluations report the exact token-weighted loss and ``eval_perplexity``.

    Trainer's own ``eval_loss`` is not token-weighted: its evaluation loop repeats each batch's
    mean loss by the *first* batch's size, so a short last batch weighs as much as a full one.
    Instead each block's summed NLL and target count travel through ``preprocess_logits_for_metrics``
    (so full logits are never kept) and ``compute_metrics`` divides the totals.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, preprocess_logits_for_metrics=block_nll_and_tokens,
                         compute_metrics=token_weighted_loss, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_token_weighted_loss" in logs:
            logs["eval_loss"] = logs.pop("eval_token_weighted_loss")
            logs["eval_perplexity"] = perplexity_from_loss(logs["eval_loss"])
        super().log(logs, start_time)


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


def build_trainer(recipe: Recipe, model: PreTrainedModel, tokenizer, blocks: dict[str, Dataset]) -> CausalLMTrainer:
    return CausalLMTrainer(
        model=model, args=recipe.training, train_dataset=blocks["train"], eval_dataset=blocks["validation"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
    )


def final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """The evaluation of the final weights: the one logged at the last step, or a fresh one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


def perplexity_summary(metrics: dict[str, float], model: PreTrainedModel, counts: dict[str, TokenCounts],
                       tokens_seen: int, unigram_perplexity: float, validation_bytes: int) -> dict[str, Any]:
    # bits per byte: the mean loss in bits, per UTF-8 byte a validation token stands for on average
    bytes_per_token = validation_bytes / counts["validation"].tokens
    return {
        "perplexity": metrics["eval_perplexity"],
        "eval_loss": metrics["eval_loss"],
        "bits_per_byte": metrics["eval_loss"] / math.log(2) / bytes_per_token,
        "eval_tokens": metrics["eval_tokens"],
        "unigram_perplexity": unigram_perplexity,
        "parameters": model.num_parameters(),
        "train_tokens_seen": tokens_seen,
        "block_size": counts["validation"].block_size,
    }


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def run(recipe: Recipe) -> dict[str, Any]:
    """Train the recipe's model and write model, tokenizer and ``perplexity.json`` to output_dir."""
    model_args, data_args, args = recipe.model, recipe.data, recipe.training
    set_seed(args.seed)
    # Under several processes the main one tokenizes and caches; the others then read its cache.
    with args.main_process_first(desc="corpus preparation"):
        raw = load_corpus(data_args)
        tokenizer, added_tokens = train_or_load_tokenizer(model_args, raw["train"])
        blocks, counts = build_blocks(raw, tokenizer, data_args)
    check_blocks(counts, data_args.block_size)
    model = build_model(model_args, tokenizer, data_args.block_size, added_tokens)

    output_dir = Path(args.output_dir)
    save_recipe(recipe, output_dir)
    save_token_counts(counts, output_dir)
    trainer = build_trainer(recipe, model, tokenizer, blocks)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    metrics = final_eval_metrics(trainer)
    unigram = unigram_nll(blocks["train"], blocks["validation"], len(tokenizer)).perplexity
    validation_bytes, _ = text_size(raw["validation"])
    summary = perplexity_summary(metrics, model, counts, trainer.state.num_input_tokens_seen, unigram,
                                 validation_bytes)
    if trainer.is_world_process_zero():
        write_json(summary, output_dir / PERPLEXITY_FILENAME)
        write_report([output_dir], output_dir)
        print(format_summary(summary, output_dir))
    return summary


def format_summary(summary: dict[str, Any], output_dir: Path) -> str:
    ratio = summary["unigram_perplexity"] / summary["perplexity"]
    return "\n".join([
        f"validation perplexity  {summary['perplexity']:.2f}  (eval loss {summary['eval_loss']:.4f} nats/token,"
        f" {summary['eval_tokens']:,} tokens)",
        f"bits per byte          {summary['bits_per_byte']:.4f}",
        f"unigram baseline       {summary['unigram_perplexity']:.2f}  (model is {ratio:.1f}x lower)",
        f"parameters             {summary['parameters']:,}",
        f"train tokens seen      {summary['train_tokens_seen']:,}",
        f"saved to               {output_dir}",
    ])
