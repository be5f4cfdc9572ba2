"""``hf-clm train`` under ``accelerate launch`` with each checkpoint save timed and its memory taken.

Usage: python -m bench.checkpoint_probe RECORD_DIR [train flags...]

Writes RECORD_DIR/rank<N>.json: for each checkpoint save, the seconds training stood still for it
(every rank waits at a barrier before and after, so the slowest rank's share is counted), this
process's resident memory just before it and its high-water mark during it (VmHWM, reset right
before the save by writing 5 to /proc/self/clear_refs), and on rank 0 the checkpoint's bytes on disk.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import torch.distributed as dist
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_clm.commands.cli import main
from hf_clm.training import train


def status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def measured(trainer, saves: list[dict]):
    save_checkpoint = trainer._save_checkpoint

    def save(*args, **kwargs):
        barrier()
        before = status_kib("VmRSS")
        reset_peak_rss()
        started = time.perf_counter()
        result = save_checkpoint(*args, **kwargs)
        barrier()
        seconds = time.perf_counter() - started
        folder = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        saves.append({"step": trainer.state.global_step, "seconds": seconds, "rss_before_mib": before / 1024,
                      "peak_rss_mib": status_kib("VmHWM") / 1024,
                      "bytes": folder_bytes(folder) if trainer.args.process_index == 0 else None})
        return result

    return save


def main_with_measured_saves(record_dir: Path, flags: list[str]) -> int:
    saves: list[dict] = []
    build_trainer = train.build_trainer

    def measured_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer._save_checkpoint = measured(trainer, saves)
        return trainer

    train.build_trainer = measured_build_trainer
    code = main(["train", *flags])
    record_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (record_dir / f"rank{rank}.json").write_text(json.dumps({"saves": saves}))
    return code


if __name__ == "__main__":
    sys.exit(main_with_measured_saves(Path(sys.argv[1]), sys.argv[2:]))
