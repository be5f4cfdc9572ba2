"""Trainer: ``transformers.Trainer`` with exact token-weighted evaluation and throughput in its logs."""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch
from datasets import IterableDataset
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_clm.data.collator import run_collator
from hf_clm.data.prepare import TrainingData
from hf_clm.errors import HfClmError, first_line
from hf_clm.evaluation.metric import compute_metrics
from hf_clm.evaluation.scoring import NLL, TARGETS, perplexity_from_loss, trainer_scores
from hf_clm.evaluation.token_text import TokenText, token_text
from hf_clm.recipe.schema import Recipe
from hf_clm.run.artifacts import disk_full_message, with_umask_modes
from hf_clm.run.figures import logged_figures
from hf_clm.training.checkpoints import damaged_checkpoint, trains_no_further
from hf_clm.training.distributed import (
    check_parallelism_took_effect,
    loading_in_saved_form,
    saves_sharded_checkpoints,
    shard_on_cpu,
    with_tied_weights_aliased,
)
from hf_clm.training.divergence import DivergenceGuard
from hf_clm.training.optimizer import MuonFactory, muon_parameter_groups
from hf_clm.training.throughput import ThroughputMeter, flops_per_token, total_peak_flops
from hf_clm.training.time_budget import BudgetClock, BudgetStop, budget_schedule, rank_zero_reading
from hf_clm.training.trackers import TrackerLocations

logger = logging.getLogger(__name__)


class CausalLMTrainer(Trainer):
    """``Trainer`` whose evaluations report the exact token-weighted loss and ``eval_perplexity``,
    and whose training logs carry throughput (``interval_tokens_per_second``, all ranks) and ``interval_mfu``.

    Trainer's own ``eval_loss`` is not token-weighted: its evaluation loop repeats each batch's
    mean loss by the *first* batch's size, so a short last batch weighs as much as a full one.
    Instead each block's scores from the package's evaluation engine (summed NLL, targets, bytes;
    no full logits kept) are gathered across processes and ``compute_metrics`` divides the totals.
    With a dict of evaluation sets each is reported under its name (``eval_<name>_perplexity``).
    """

    def __init__(self, *args, flops_per_token: float, peak_flops: float | None, **kwargs):
        super().__init__(*args, compute_metrics=corpus_figures, **kwargs)
        text = token_text(self.processing_class)
        self.token_text = TokenText(text.bytes.to(self.args.device), text.chars.to(self.args.device))
        self.eval_sets: dict = {}
        self.meter = ThroughputMeter(flops_per_token, peak_flops)
        self.divergence = DivergenceGuard()
        self.eval_seconds, self.eval_warned, self.max_eval_samples = 0.0, False, None
        # tokens one evaluation scores (validation and named sets), and those training is to take (None: unknown)
        self.eval_tokens, self.planned_train_tokens, self.final_evaluation = 0, None, False
        self.budget_clock: BudgetClock | None = None
        self.add_callback(self.meter)
        self.add_callback(self.divergence)

    def training_step(self, *args, **kwargs) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        self.divergence.record_loss(loss)
        return loss

    def _get_grad_norm(self, *args, **kwargs):
        # the norm before clipping: clipping an infinite norm zeroes the gradients, hiding it
        norm = super()._get_grad_norm(*args, **kwargs)
        self.divergence.record_grad_norm(norm)
        return norm

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if shard_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True
        check_parallelism_took_effect(self.accelerator, self.args)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.budget_clock is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = budget_schedule(self.args, optimizer or self.optimizer, self.budget_clock)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _issue_warnings_after_load(self, load_result) -> None:
        # a tied output head is not saved apart from the embeddings it shares: not a missing key
        tied = tied_parameter_names(self.accelerator.unwrap_model(self.model))
        super()._issue_warnings_after_load(load_result._replace(
            missing_keys=[key for key in load_result.missing_keys if key not in tied]))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            rows = trainer_scores(model, inputs, self.token_text)
        loss = rows[:, NLL].sum() / rows[:, TARGETS].sum().clamp(min=1)
        return loss, rows, rows

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        with loading_in_saved_form(self.accelerator, resume_from_checkpoint), \
                damaged_checkpoint(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with loading_in_saved_form(self.accelerator, checkpoint), damaged_checkpoint(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _save(self, output_dir: str | None = None, state_dict=None):
        if state_dict and self.is_fsdp_enabled:
            state_dict = with_tied_weights_aliased(self.accelerator.unwrap_model(self.model), state_dict)
        super()._save(output_dir, state_dict)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The validation split as ``eval_*`` (as with one set), then each named set as ``eval_<name>_*``."""
        if eval_dataset is None:
            self.warn_before_a_long_evaluation()
        started = time.perf_counter()
        with self.meter.paused():
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if eval_dataset is None:
                for name, dataset in self.eval_sets.items():
                    metrics.update(super().evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
        self.eval_seconds += time.perf_counter() - started
        self.warn_if_evaluation_dominates()
        return metrics

    def warn_if_evaluation_dominates(self) -> None:
        """Once, at an evaluation during training: evaluation has taken more than EVAL_SHARE of the time."""
        share = self.eval_seconds / max(self.eval_seconds + self.meter.train_seconds(), 1e-9)
        if self.eval_warned or not 0 < self.state.global_step < self.state.max_steps or share <= EVAL_SHARE:
            return
        self.eval_warned = True
        if self.is_world_process_zero():
            logger.warning("evaluation has taken %.0f%% of the time so far (%.0f s against %.0f s of training); "
                           "evaluate fewer documents (max_eval_samples, now %s) or less often (eval_steps, now %s)",
                           100 * share, self.eval_seconds, self.meter.train_seconds(),
                           self.max_eval_samples, self.args.eval_steps)

    def warn_before_a_long_evaluation(self) -> None:
        """Before the evaluation of the base model (``eval_on_start``) and the final one, from the token
        counts: its tokens at a forward pass's cost against the tokens training takes (planned before
        training, trained at the end), when it would be more than EVAL_SHARE of the time."""
        step = self.state.global_step
        if step == 0:
            which, trained = "the evaluation before training (eval_on_start)", self.planned_train_tokens
        elif self.final_evaluation or step >= self.state.max_steps:
            which, trained = "the final evaluation", self.state.num_input_tokens_seen
        else:
            return
        share = evaluation_share(self.eval_tokens, trained)
        if share is None or share <= EVAL_SHARE or not self.is_world_process_zero():
            return
        logger.warning("%s scores %s tokens, about %.0f%% of the time of the %s tokens training %s (a token "
                       "evaluated costs about a third of one trained); evaluate fewer documents (max_eval_samples, "
                       "now %s)", which, f"{self.eval_tokens:,}", 100 * share, f"{trained:,}",
                       "takes" if step == 0 else "took", self.max_eval_samples)

    def _save_checkpoint(self, *args, **kwargs):
        with self.meter.paused():
            try:
                super()._save_checkpoint(*args, **kwargs)
                with_umask_modes(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            except (*WRITE_ERRORS, ModelWriteFailed) as err:
                raise checkpoint_write_error(Path(self.args.output_dir), self.state.global_step, err) from None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model as ``from_pretrained`` loads it. With sharded checkpoints (Trainer's internal call
        saves a checkpoint) the checkpoint gets the model's description only, its weights being written
        sharded with the optimizer state, and the final model is gathered into one full state dict."""
        try:
            if not saves_sharded_checkpoints(self.accelerator):
                super().save_model(output_dir, _internal_call)
            elif _internal_call:
                self.save_model_description(output_dir or self.args.output_dir)
            else:
                self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
            if not _internal_call and self.args.should_save:
                with_umask_modes(output_dir or self.args.output_dir)
        except WRITE_ERRORS as err:
            reason = disk_full_message(err) if isinstance(err, OSError) else None
            raise ModelWriteFailed(f"saving the model to {self.args.output_dir} failed ({reason or first_line(err)}); "
                             f"is the disk full? The run is not marked finished; free some space and rerun with "
                             f"resume_from_checkpoint: auto") from None

    def save_model_description(self, output_dir: str) -> None:
        """What a sharded checkpoint holds beside its weights: the model's config, the tokenizer and
        the training arguments, so that the folder alone says what model its shards make up."""
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        model.config.save_pretrained(output_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / TRAINING_ARGS_NAME)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key in [k for k in logs if k.startswith("eval_") and k.endswith(TOKEN_WEIGHTED_LOSS)]:
            prefix = key[: -len(TOKEN_WEIGHTED_LOSS)]
            logs[prefix + "loss"] = logs.pop(key)
            logs[prefix + "perplexity"] = perplexity_from_loss(logs[prefix + "loss"])
        if "loss" in logs:
            logs.update(self.meter.interval(self.state.num_input_tokens_seen))
        # Without start_time: Trainer would add its own train_tokens_per_second (time since the session
        # began, evaluation included) under the name of hf_clm.training.throughput's figure.
        # trainer_state.json must stay valid JSON: no NaN or Infinity in the log history
        super().log({key: None if isinstance(value, float) and not math.isfinite(value) else value
                     for key, value in logs.items()})

    def get_train_dataloader(self) -> DataLoader:
        if not (isinstance(self.train_dataset, IterableDataset) and self.args.world_size > 1):
            return super().get_train_dataloader()
        # Already split across ranks by split_dataset_by_node: accelerate's prepare() would
        # either send rank 0's batches everywhere or split each rank's part once more.
        return EpochDataLoader(self.train_dataset, batch_size=self._train_batch_size,
                               collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                               pin_memory=self.args.dataloader_pin_memory)

def tied_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that share their tensor with another (a head tied to the embeddings)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {name for group in names.values() if len(group) > 1 for name in group}


# The share of the time (training + evaluation) above which evaluation is worth a warning.
EVAL_SHARE = 0.25
# A token evaluated (forward pass) against one trained (forward and backward: about 3x the FLOPs).
EVAL_COST = 1 / 3


def evaluation_share(eval_tokens: int, train_tokens: int | None) -> float | None:
    """The share of the time one evaluation of ``eval_tokens`` takes beside ``train_tokens`` of training,
    from their FLOPs; None when the training tokens are unknown."""
    if not train_tokens or not eval_tokens:
        return None
    return EVAL_COST * eval_tokens / (EVAL_COST * eval_tokens + train_tokens)


def planned_train_tokens(recipe: Recipe, counts: dict) -> int | None:
    """The tokens the run is to train: max_steps' (max_tokens'), a time budget's where the recipe says its
    throughput (tuned_for_tokens_per_second), or the epochs' of the training blocks; None when unknown."""
    args, run = recipe.training_args, recipe.run_args
    if run.max_train_seconds is not None:
        steps = recipe.tuned_steps()
        return None if steps is None else steps * recipe.tokens_per_step()
    if args.max_steps > 0:
        return args.max_steps * recipe.tokens_per_step()
    train = counts.get("train")
    return None if train is None else round(args.num_train_epochs * train.kept)


class ModelWriteFailed(HfClmError):
    """The weights could not be written (a full disk)."""


# torch.save reports a failed write as a RuntimeError, safetensors as a SafetensorError
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def checkpoint_write_error(output_dir: Path, step: int, err: Exception) -> HfClmError:
    """A checkpoint that could not be written (a full disk, a file-size limit): its partial folder
    removed, one line saying so; the checkpoints before it are intact."""
    folder = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    reason = disk_full_message(err) if isinstance(err, OSError) else \
        str(err).split(" failed (", 1)[-1].rsplit("); is the disk full?", 1)[0] if isinstance(err, ModelWriteFailed) else None
    return HfClmError(f"writing {folder} failed ({reason or first_line(err)}); is the disk full? Its "
                      f"partial folder was removed; free some space and rerun with resume_from_checkpoint: auto")


class EpochDataLoader(DataLoader):
    """A DataLoader that passes Trainer's ``set_epoch`` on to its dataset (a new shuffle per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


TOKEN_WEIGHTED_LOSS = "token_weighted_loss"


def corpus_figures(prediction: EvalPrediction) -> dict[str, float]:
    """Token-weighted loss, target count and bits per byte/char of one evaluation set: the
    ``evaluate`` metric's figures (``hf_clm.evaluation.metric.compute_metrics``), the loss under its own name."""
    figures = compute_metrics(prediction)
    return {TOKEN_WEIGHTED_LOSS: figures["loss"], "tokens": figures["tokens"],
            "bits_per_byte": figures["bits_per_byte"], "bits_per_char": figures["bits_per_char"]}


def build_trainer(recipe: Recipe, model: PreTrainedModel, data: TrainingData) -> CausalLMTrainer:
    if data.mixture is not None:  # interleaved by weight and shuffled within each source: read in that order
        recipe.training_args.train_sampling_strategy = "sequential"
    collator = run_collator(data.tokenizer, recipe.model_args.attention_scope)
    trainer = CausalLMTrainer(
        model=model, args=recipe.training_args, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=collator, processing_class=data.tokenizer,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(recipe, model),
        flops_per_token=flops_per_token(model, recipe.data_args.block_size),
        peak_flops=total_peak_flops(recipe.run_args, recipe.training_args),
    )
    trainer.eval_sets = data.eval_sets
    trainer.max_eval_samples = recipe.data_args.max_eval_samples or "all"
    trainer.eval_tokens = sum(count.kept for name, count in data.counts.items() if name != "train")
    trainer.planned_train_tokens = planned_train_tokens(recipe, data.counts)
    trainer.add_callback(TrackerLocations(trainer))
    if recipe.run_args.max_train_seconds is not None:
        trainer.budget_clock = BudgetClock(trainer.meter.train_seconds, recipe.run_args.max_train_seconds,
                                           rank_zero_reading(trainer.accelerator))
        trainer.add_callback(BudgetStop(trainer.budget_clock, trainer.callback_handler))
    return trainer


def eval_set_figures(trainer: Trainer) -> dict[str, dict[str, float]]:
    """Each named evaluation set's figures at its latest evaluation (that of the final weights)."""
    figures = {}
    for name in getattr(trainer, "eval_sets", {}):
        prefix = f"eval_{name}_"
        last = next((e for e in reversed(trainer.state.log_history) if prefix + "loss" in e), None)
        if last is not None:
            figures[name] = logged_figures(last, prefix)
    return figures

def load_checkpoint_without_training(trainer: Trainer, checkpoint: str) -> None:
    """The state of a checkpoint that already holds every step: its weights and trainer state,
    nothing trained (``Trainer.train`` would run one more step when it ends mid-epoch)."""
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))


def optimizer_cls_and_kwargs(recipe: Recipe, model: PreTrainedModel) -> tuple[type, dict] | None:
    """``optim: muon``: Trainer's factory hook, its parameter split checked now, before training."""
    if not recipe.uses_muon():
        return None
    muon_parameter_groups(model, recipe.training_args, recipe.run_args.muon_learning_rate)
    return MuonFactory, {"args": recipe.training_args, "muon_learning_rate": recipe.run_args.muon_learning_rate,
                         "momentum": recipe.run_args.muon_momentum}


def final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """The evaluation of the final weights: the one logged at the last step, or a fresh one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    trainer.final_evaluation = True
    return trainer.evaluate()


def train_to_the_end(trainer: Trainer, resume: str | None) -> None:
    """Train (from ``resume`` when given), or only load a checkpoint that already holds every step;
    then save the final model and Trainer's state."""
    if resume and trains_no_further(resume, trainer.args):
        logger.info("%s holds every step the recipe asks for: finishing the run without training", resume)
        load_checkpoint_without_training(trainer, resume)
    else:
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
