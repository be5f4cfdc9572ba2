"""Checkpoints: which checkpoint a run resumes from, and what an output_dir may be trained into."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
from pathlib import Path

from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_clm.errors import HfClmError, first_line
from hf_clm.run.artifacts import (
    damaged_weights,
    finished_marker_problem,
    read_json,
    sharded_folder_problem,
    weights_files,
    zip_archive_problem,
)
from hf_clm.run.files import CARD_TAG, MODEL_CARD, PACKAGE_OUTPUTS, PERPLEXITY_FILENAME, TRAINER_STATE

logger = logging.getLogger(__name__)

TEMPLATE_CARD_HEADING = "# Model Card for Model ID"  # huggingface_hub's template, which peft fills in


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it can): Trainer writes
    ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a folder cut
    short by a crash lacks it or a part; a part cut short (a full disk, a kill while the file
    system flushed) fails its own check: a safetensors header that promises more bytes than
    there are, a ``torch.save`` archive without its directory, a sharded (FSDP
    ``SHARDED_STATE_DICT``) folder without the ``.metadata`` DCP writes last."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {TRAINER_STATE}"
    weights = weights_files(path)
    binaries = sorted(path.glob("*.bin"))
    if not weights and not any(p.name != "training_args.bin" for p in binaries) and not sharded_weights(path):
        return "no weights"
    if not has_optimizer_state(path):
        return "no optimizer state (optimizer.pt, optimizer.bin or optimizer_0/)"
    if not (path / "scheduler.pt").is_file():
        return "no scheduler.pt"
    rng = sorted(path.glob("rng_state*.pth"))
    if not rng:
        return "no rng_state*.pth"
    if damaged := damaged_weights(path):
        return f"{damaged[0].name}: {damaged[1]}"
    for folder in sharded_folders(path):
        if problem := sharded_folder_problem(folder):
            return f"{folder.name}/: {problem}"
    optimizer = [p for p in (path / "optimizer.pt", path / "optimizer.bin") if p.is_file()]
    for part in [*(p for p in binaries if p.name not in ("training_args.bin", "optimizer.bin")), *optimizer,
                 path / "scheduler.pt", *rng]:
        if problem := zip_archive_problem(part):
            return f"{part.name}: {problem}"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    return checkpoint_problem(path) is None


def has_optimizer_state(path: Path) -> bool:
    """optimizer.pt (one process, DDP), optimizer.bin (FSDP, full state dict) or optimizer_0/ (FSDP, sharded)."""
    return (path / "optimizer.pt").is_file() or (path / "optimizer.bin").is_file() or (path / SHARDED_OPTIMIZER).is_dir()


# accelerate's folders of an FSDP SHARDED_STATE_DICT checkpoint, written by torch.distributed.checkpoint
SHARDED_WEIGHTS, SHARDED_OPTIMIZER = "pytorch_model_fsdp_0", "optimizer_0"


def sharded_weights(path: Path) -> bool:
    return (path / SHARDED_WEIGHTS).is_dir()


def saved_by_fsdp(path: Path) -> bool:
    """Weights sharded, or gathered by FSDP into ``pytorch_model_fsdp.bin`` (its optimizer state keyed for FSDP)."""
    return sharded_weights(path) or (path / "pytorch_model_fsdp.bin").is_file()


def sharded_folders(path: Path) -> list[Path]:
    return [path / name for name in (SHARDED_WEIGHTS, SHARDED_OPTIMIZER) if (path / name).is_dir()]


def checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    for path in reversed(checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s: an incomplete checkpoint (%s; interrupted while saving?)", path, problem)
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
    if path.exists() and not path.is_dir():
        raise HfClmError(f"resume_from_checkpoint {wanted} is a file, not a checkpoint folder; give the folder "
                         f"(OUTPUT_DIR/checkpoint-N) or 'auto'")
    if not path.is_dir():
        raise HfClmError(f"resume_from_checkpoint {wanted} does not exist; give a checkpoint folder or 'auto'")
    problem = checkpoint_problem(path)
    if problem:
        raise HfClmError(f"resume_from_checkpoint {wanted} is not a complete checkpoint ({problem}); give "
                         f"another or 'auto'")
    return str(path)


def holds_finished_run(output_dir: Path) -> bool:
    try:
        return isinstance(json.loads((output_dir / PERPLEXITY_FILENAME).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def check_output_dir(output_dir: Path, resume: str | None, overwrite: bool, auto: bool = False) -> None:
    """Refuse to train over a finished run or someone's checkpoints unless asked to. With
    ``resume_from_checkpoint: auto`` and no complete checkpoint, the incomplete ones are no one's
    work worth keeping: the run starts fresh (:func:`clear_incomplete_checkpoints`). Folders named
    like checkpoints that Trainer did not write are refused whatever is asked: Trainer's checkpoint
    rotation and overwrite_output_dir would delete them."""
    foreign = sorted(p.name for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                     if p.is_dir() and not p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit())
    if foreign:
        raise HfClmError(f"output_dir {output_dir} holds {', '.join(foreign)}, which hf-clm did not write; Trainer "
                         f"deletes folders named {PREFIX_CHECKPOINT_DIR}-* when it rotates checkpoints: move or "
                         f"rename it, or choose another output_dir")
    if overwrite:
        return
    if holds_finished_run(output_dir) and resume is None:
        raise HfClmError(f"output_dir {output_dir} holds a finished run; choose another output_dir or set "
                         f"overwrite_output_dir: true to replace it")
    found = checkpoints(output_dir)
    if found and resume is None and not auto:
        raise HfClmError(f"output_dir {output_dir} holds checkpoints ({found[-1].name}); set "
                         f"resume_from_checkpoint: auto to continue, or overwrite_output_dir: true to start over")


def clear_incomplete_checkpoints(output_dir: Path) -> None:
    for path in checkpoints(output_dir):
        if not is_complete_checkpoint(path):
            logger.warning("Removing the incomplete checkpoint %s", path)
            shutil.rmtree(path)


def is_package_card(path: Path) -> bool:
    try:
        return f"- {CARD_TAG}\n" in path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def remove_template_card(folder: Path) -> None:
    """peft's ``save_pretrained`` writes its template model card (a local base, no figures) as
    README.md; the run keeps none until a push writes the package's card."""
    card = folder / MODEL_CARD
    try:  # every rank saves, and removes: another rank may remove it between the check and the read
        if not is_package_card(card) and TEMPLATE_CARD_HEADING in card.read_text(errors="replace"):
            card.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def previous_run_files(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = {p for pattern in PACKAGE_OUTPUTS for p in output_dir.glob(pattern)}
    if is_package_card(output_dir / MODEL_CARD):
        found.add(output_dir / MODEL_CARD)
    return sorted(found)


def clear_previous_run(output_dir: Path) -> None:
    """overwrite_output_dir: remove everything a previous run wrote (the finished-run marker
    first), and nothing else; called once the new run's recipe, corpus, tokenizer and model are ready."""
    (output_dir / PERPLEXITY_FILENAME).unlink(missing_ok=True)
    for path in previous_run_files(output_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


def trains_no_further(checkpoint: str | Path, args: TrainingArguments) -> bool:
    """True when the checkpoint already holds every step the recipe asks for: resuming from it
    must train nothing (Trainer would still run one more step from the middle of an epoch)."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    if args.max_steps > 0:
        target = args.max_steps
    elif state.get("num_train_epochs") == args.num_train_epochs:
        target = state.get("max_steps", 0)
    else:
        return False
    return int(state["global_step"]) >= target > 0


def finished_summary(output_dir: Path, resume: str | None, args: TrainingArguments) -> dict | None:
    """The figures of a run that is already finished at the checkpoint it would resume from (nothing
    to train: the run is left untouched); None when there is training or finishing to do."""
    if not resume or not trains_no_further(resume, args) or finished_marker_problem(output_dir) is not None:
        return None
    summary = read_json(output_dir / PERPLEXITY_FILENAME, "")
    return summary if summary.get("global_step") == checkpoint_step(resume) else None


@contextlib.contextmanager
def damaged_checkpoint(checkpoint: str | None):
    """A checkpoint whose files pass the size checks but do not load (flipped bytes in a ``.distcp``
    or a ``torch.save`` archive): one line naming it, instead of every rank's traceback."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (CheckpointException, RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        if checkpoint is None or isinstance(err, OSError) and err.errno is not None:
            raise  # a disk or permission failure says itself
        detail = next((line.strip() for line in str(err).splitlines() if "Error" in line or "failed" in line),
                      first_line(err))
        raise HfClmError(f"checkpoint {checkpoint} cannot be loaded ({detail[:200]}): its files are damaged; resume "
                         f"from an earlier checkpoint (--resume_from_checkpoint {Path(checkpoint).parent}/"
                         f"checkpoint-N) or delete it and use 'auto'") from None

