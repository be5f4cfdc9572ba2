"""Trackers: where ``report_to`` sends the run's logs, said once when training begins.

Trainer's own integrations do the logging (``report_to: tensorboard``, ``trackio``, ``wandb``,
``mlflow``, ...); their packages are optional (``pip install 'hf-clm[tensorboard]'``, checked with
the recipe). What Trainer leaves unsaid is where the logs land: TensorBoard's event files go to
``TENSORBOARD_LOGGING_DIR`` or ``output_dir/runs/<date>_<host>``, a folder printed nowhere. This
callback, added after Trainer's, names each destination once, on the main process.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EVENT_FILES = "events.out.tfevents.*"


def tensorboard_viewer(folder: str) -> str:
    """How to look at event files: the tensorboard command where it is installed; where only tensorboardX
    (which writes them) is, the package to install first."""
    if importlib.util.find_spec("tensorboard") is not None:
        return f"tensorboard --logdir {folder}"
    return f"to view them: pip install tensorboard, then tensorboard --logdir {folder}"


def tracker_location(callback: TrainerCallback) -> str | None:
    """Where one of Trainer's tracker callbacks writes, once it has started (None for other callbacks)."""
    name = type(callback).__name__
    if name == "TensorBoardCallback" and getattr(callback, "logging_dir", None):
        return f"tensorboard: event files in {callback.logging_dir} ({tensorboard_viewer(callback.logging_dir)})"
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


def resumed_tensorboard_folder(output_dir: Path) -> Path | None:
    """The folder of ``output_dir/runs`` the run being resumed wrote its event files to (the newest)."""
    folders = [folder for folder in (output_dir / "runs").glob("*") if folder.is_dir() and any(folder.glob(EVENT_FILES))]
    return max(folders, key=lambda folder: max(f.stat().st_mtime for f in folder.glob(EVENT_FILES)), default=None)


def continue_tensorboard_folder(trainer, output_dir: Path) -> None:
    """A resumed run's TensorBoard events go to the folder of the run it resumes (Trainer would start a new
    one named by the time, and TensorBoard would show the two runs as two overlapping curves), unless
    TENSORBOARD_LOGGING_DIR names one."""
    folder = resumed_tensorboard_folder(output_dir)
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None and folder is not None:
            callback.logging_dir = str(folder)
