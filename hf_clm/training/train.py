"""Train: the whole pipeline, recipe -> corpus -> tokenizer -> blocks -> Trainer -> perplexity."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, TrainingArguments, set_seed

from hf_clm.data.blocks import TokenCounts, save_token_counts, scored_text
from hf_clm.data.corpus import validation_source
from hf_clm.data.mixture import mixture_validation_text
from hf_clm.data.prepare import TrainingData, training_data
from hf_clm.data.sources import check_hub_sources
from hf_clm.errors import HfClmError
from hf_clm.evaluation.report import write_report
from hf_clm.evaluation.scoring import perplexity_from_loss, unigram_scores
from hf_clm.hub.push import PushPlan, push_run, push_target
from hf_clm.model.build import build_model, check_4bit_possible
from hf_clm.model.merge import merge_adapter
from hf_clm.recipe.schema import Recipe, save_recipe
from hf_clm.run.artifacts import write_finished_marker
from hf_clm.run.figures import console_summary, logged_figures
from hf_clm.run.files import PERPLEXITY_FILENAME
from hf_clm.run.locks import folder_lock
from hf_clm.training.checkpoints import (
    check_output_dir,
    clear_incomplete_checkpoints,
    clear_previous_run,
    finished_summary,
    remove_template_card,
    resume_checkpoint,
)
from hf_clm.training.distributed import check_launch, check_resume_launch
from hf_clm.training.divergence import TrainingDiverged
from hf_clm.training.record import record_run
from hf_clm.training.throughput import training_throughput
from hf_clm.training.trackers import continue_tensorboard_folder
from hf_clm.training.trainer import build_trainer, eval_set_figures, final_eval_metrics, train_to_the_end

logger = logging.getLogger(__name__)


def check_blocks(counts: dict[str, TokenCounts], block_size: int) -> None:
    for name, count in counts.items():
        if count.blocks == 0:
            raise HfClmError(f"the {name} split has {count.tokens} tokens, fewer than one block of "
                             f"{block_size}; lower block_size or add text")


def check_fills_a_step(counts: dict[str, TokenCounts], recipe: Recipe) -> None:
    """An optimizer step takes batch x accumulation x processes blocks; the corpus must fill one."""
    if "train" not in counts:
        return
    args, per_step = recipe.training_args, recipe.global_batch_blocks()
    if counts["train"].blocks < per_step:
        raise HfClmError(
            f"the train split has {counts['train'].blocks} blocks, fewer than one optimizer step takes "
            f"({args.per_device_train_batch_size} per_device_train_batch_size x {args.gradient_accumulation_steps} "
            f"gradient_accumulation_steps x {args.world_size} processes = {per_step}): training would make zero "
            f"steps; lower the batch size or accumulation, or add text")


def warn_if_warmup_covers_the_run(recipe: Recipe, counts: dict[str, TokenCounts]) -> None:
    """Warm-up as long as the run trains at a learning rate that never reaches ``learning_rate``."""
    args = recipe.training_args
    steps = args.max_steps if args.max_steps > 0 else math.ceil(
        args.num_train_epochs * max(1, counts["train"].blocks // recipe.global_batch_blocks()))
    if args.get_warmup_steps(steps) >= steps:
        logger.warning("warmup_steps %g covers the whole run of %d steps: the learning rate never reaches "
                       "learning_rate %g; lower warmup_steps (below 1 it is a fraction of the steps)",
                       args.warmup_steps, steps, args.learning_rate)


def check_final_loss(eval_loss: float | None) -> None:
    """A finished run has a finite perplexity: a loss past exp()'s range (over 709 nats/token, far
    worse than guessing uniformly) or not a number means the model diverged."""
    if eval_loss is None or not math.isfinite(perplexity_from_loss(eval_loss)):
        raise TrainingDiverged(
            f"the final evaluation loss is {eval_loss} nats/token, so perplexity is not finite: the model diverged "
            f"without a non-finite gradient; the run is not marked finished; lower learning_rate (or use bf16 "
            f"instead of fp16) and train again with overwrite_output_dir: true")


def base_model_metrics(log_history: list[dict[str, float]]) -> dict[str, float] | None:
    """The evaluation logged before the first step (``eval_on_start``): the pretrained model as it was."""
    return next((entry for entry in log_history if "eval_loss" in entry and entry.get("step") == 0), None)


def perplexity_summary(metrics: dict[str, float], model: PreTrainedModel, data: TrainingData,
                       tokens_seen: int, unigram_perplexity: float | None,
                       base: dict[str, float] | None = None, evaluated_on: str | None = None) -> dict[str, Any]:
    """The run's figures; with ``base`` (a fine-tuning run), the base model's figures on the same
    validation set under ``"base"``; ``evaluated_on`` names that set in words."""
    return {
        **logged_figures(metrics),
        **({"base": logged_figures(base)} if base else {}),
        "evaluated_on": evaluated_on,
        "unigram_perplexity": unigram_perplexity,
        "parameters": model.num_parameters(),
        "trainable_parameters": model.num_parameters(only_trainable=True),
        "train_tokens_seen": tokens_seen,
        "block_size": data.counts["validation"].block_size,
        "vocab_size": len(data.tokenizer),
    }


def output_dir_lock(args: TrainingArguments):
    """The main process holds output_dir's lock for the whole run; the other ranks are its helpers."""
    return folder_lock(args.output_dir, "output_dir") if args.process_index == 0 else contextlib.nullcontext()


def run(recipe: Recipe) -> dict[str, Any]:
    """Train the recipe's model and write model, tokenizer, report and, last, ``perplexity.json``
    (the finished-run marker) to output_dir."""
    args = recipe.training_args
    check_hub_sources(recipe.model_args, recipe.data_args)
    push = push_target(recipe)
    check_4bit_possible(recipe.model_args)
    with output_dir_lock(args):
        return locked_run(recipe, push)


def locked_run(recipe: Recipe, push: PushPlan | None) -> dict[str, Any]:
    args = recipe.training_args
    check_launch(args)
    output_dir = Path(args.output_dir)
    resume = resume_checkpoint(args)
    check_output_dir(output_dir, resume, recipe.run_args.overwrite_output_dir, auto=args.resume_from_checkpoint == "auto")
    if (summary := finished_summary(output_dir, resume, args)) is not None:
        print(f"{output_dir} already finished at step {summary['global_step']}: nothing to train")
        return summary
    check_resume_launch(resume, args)
    set_seed(args.seed)
    with args.main_process_first(desc="corpus preparation"):  # the others then read the main process's cache
        data = training_data(recipe)
    check_training_data(data.counts, recipe)
    model = build_model(recipe.model_args, data.tokenizer, recipe.data_args.block_size)
    if recipe.model_args.model_name_or_path and resume is None:
        args.eval_on_start = True  # the base model's perplexity, for the before/after comparison
    trainer = build_trainer(recipe, model, data)  # refuses an optimizer that cannot work before any file is written
    start_output_dir(recipe, data, resume)  # everything is ready: only now may the previous contents go
    if resume is not None:
        continue_tensorboard_folder(trainer, output_dir)
    recorder = record_run(trainer, recipe)
    train_to_the_end(trainer, resume)
    remove_template_card(output_dir)
    summary = run_summary(recipe, trainer, model, data, recorder.record)
    if trainer.is_world_process_zero():
        finish_run(recipe, summary, trainer.state.global_step, push)
    return summary


def check_training_data(counts: dict[str, TokenCounts], recipe: Recipe) -> None:
    check_blocks(counts, recipe.data_args.block_size)
    check_fills_a_step(counts, recipe)
    warn_if_warmup_covers_the_run(recipe, counts)


def start_output_dir(recipe: Recipe, data: TrainingData, resume: str | None) -> None:
    """The previous run's files removed as the recipe asks (main process), then the new recipe and
    token counts written; a run being extended is no longer finished until its new marker is."""
    args, output_dir = recipe.training_args, Path(recipe.training_args.output_dir)
    if not args.should_save:
        return
    if recipe.run_args.overwrite_output_dir:
        clear_previous_run(output_dir)
    elif resume is None:
        clear_incomplete_checkpoints(output_dir)
    (output_dir / PERPLEXITY_FILENAME).unlink(missing_ok=True)
    save_recipe(recipe, output_dir)
    save_token_counts(data.counts, output_dir)


def run_summary(recipe: Recipe, trainer, model: PreTrainedModel, data: TrainingData, record: dict[str, Any]
                ) -> dict[str, Any]:
    """The finished run's figures: the final evaluation, baselines, throughput and how it ran."""
    metrics = final_eval_metrics(trainer)
    check_final_loss(metrics["eval_loss"])
    unigram = None if data.streamed else unigram_scores(data.train, data.validation, len(data.tokenizer)).perplexity
    evaluated_on = mixture_validation_text(data.mixture) if data.mixture else scored_text(
        validation_source(vars(recipe.data_args)), data.counts["validation"], recipe.data_args.max_eval_samples)
    summary = perplexity_summary(metrics, model, data, trainer.state.num_input_tokens_seen, unigram,
                                 base_model_metrics(trainer.state.log_history), evaluated_on)
    summary.update(training_throughput(trainer, trainer.meter), run=record, global_step=trainer.state.global_step)
    if recipe.run_args.max_train_seconds is not None:
        summary["max_train_seconds"] = recipe.run_args.max_train_seconds
        summary["budget"] = budget_held(recipe, trainer.state.global_step, summary.get("train_tokens_per_second"))
    if data.eval_sets:
        summary["eval_sets"] = eval_set_figures(trainer)
    if data.mixture:
        summary["mixture"] = data.mixture
    return summary


def budget_held(recipe: Recipe, steps: int, tokens_per_second: float | None) -> dict[str, Any]:
    """What a time budget held on this machine, beside what it held where the recipe was tuned
    (``tuned_for_tokens_per_second``): the steps and tokens trained, and whether they fell under half."""
    held: dict[str, Any] = {"steps": steps, "tokens_per_second": tokens_per_second}
    tuned = recipe.tuned_steps()
    if tuned is not None:
        held.update(tuned_for_steps=tuned, tuned_for_tokens_per_second=recipe.run_args.tuned_for_tokens_per_second,
                    far_short=steps < tuned / 2)
        if held["far_short"]:
            logger.warning("this run trained %d steps; the recipe was tuned for ~%d in its %g s budget: expect a "
                           "worse perplexity than the recipe's", steps, tuned, recipe.run_args.max_train_seconds)
    return held


def finish_run(recipe: Recipe, summary: dict[str, Any], step: int, push: PushPlan | None) -> None:
    """Main process: merged adapter, report, then the finished-run marker; the summary; the push."""
    output_dir = Path(recipe.training_args.output_dir)
    if recipe.run_args.merge_adapter:
        merge_adapter(output_dir)
    write_report([output_dir], output_dir, summaries=[summary])
    write_finished_marker(summary, output_dir, step)  # last: the run is finished
    print(console_summary(summary, output_dir))
    if push:
        print(f"pushed to              {push_run(output_dir, *push)}")
