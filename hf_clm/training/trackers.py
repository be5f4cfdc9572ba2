"""Trackers: where ``report_to`` sends the run's logs, said once when training begins.

Trainer's own integrations do the logging (``report_to: tensorboard``, ``trackio``, ``wandb``,
``mlflow``, ...); their packages are optional (``pip install 'hf-clm[tensorboard]'``, checked with
the recipe). What Trainer leaves unsaid is where the logs land: TensorBoard's event files go to
``TENSORBOARD_LOGGING_DIR`` or ``output_dir/runs/<date>_<host>``, a folder printed nowhere. This
callback, added after Trainer's, names each destination once, on the main process.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def tracker_location(callback: TrainerCallback) -> str | None:
    """Where one of Trainer's tracker callbacks writes, once it has started (None for other callbacks)."""
    name = type(callback).__name__
    if name == "TensorBoardCallback" and getattr(callback, "logging_dir", None):
        return f"tensorboard: event files in {callback.logging_dir} (tensorboard --logdir {callback.logging_dir})"
    if name == "WandbCallback" and getattr(getattr(callback, "_wandb", None), "run", None) is not None:
        return f"wandb: {callback._wandb.run.url or callback._wandb.run.name}"
    if name == "MLflowCallback" and getattr(callback, "_ml_flow", None) is not None:
        return f"mlflow: {callback._ml_flow.get_tracking_uri()}"
    if name == "TrackioCallback" and getattr(callback, "_initialized", False):
        space = getattr(callback, "_space_id", None)
        return f"trackio: {space and f'https://huggingface.co/spaces/{space}' or 'the local dashboard (trackio show)'}"
    return None


class TrackerLocations(TrainerCallback):
    """Logs where each tracker writes, when training begins (after the trackers have started)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for callback in self.trainer.callback_handler.callbacks:
            if (location := tracker_location(callback)) is not None:
                logger.info("Logging to %s", location)
