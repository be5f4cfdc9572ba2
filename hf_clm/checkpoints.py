"""Checkpoints: which checkpoint a run resumes from, and what an output_dir may be trained into."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_clm.artifacts import PERPLEXITY_FILENAME
from hf_clm.errors import HfClmError

logger = logging.getLogger(__name__)


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint written to the end: Trainer writes ``trainer_state.json`` after the weights,
    optimizer, scheduler and RNG states, so a folder cut short by a crash lacks it or a part."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return has_weights and has_optimizer_state(path) and (path / "scheduler.pt").is_file() \
        and any(path.glob("rng_state*.pth"))

def has_optimizer_state(path: Path) -> bool:
    """optimizer.pt (one process, DDP), optimizer.bin (FSDP, full state dict) or optimizer_0/ (FSDP, sharded)."""
    return (path / "optimizer.pt").is_file() or (path / "optimizer.bin").is_file() or (path / "optimizer_0").is_dir()

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
                         f"weights, optimizer state, scheduler.pt, rng_state*.pth); give another or 'auto'")
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
