"""``hf-clm merge``: a LoRA run's adapter merged into its base model, written into a staging folder and
renamed into place, with the digests of the adapter it came from."""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
from pathlib import Path

from hf_clm.data.tokenizer import read_tokenizer
from hf_clm.errors import HfClmError
from hf_clm.model.build import is_adapter_dir, load_adapter_model
from hf_clm.run.artifacts import (
    json_text,
    output_folder_problem,
    stale_temporaries,
    temporary_prefix,
    weights_digests,
    with_umask_modes,
)
from hf_clm.run.files import ADAPTER_CONFIG, MERGED_DIRNAME, MERGED_FROM, MODEL_CARD, TOKENIZER_FILE

logger = logging.getLogger(__name__)

# What a merge writes: the model (config, weights, possibly sharded), the tokenizer's files and the
# adapter it was merged from; and the model card a push writes there.
MERGED_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "vocab.json", "merges.txt", "chat_template.jinja", "tokenizer.model", MERGED_FROM, MODEL_CARD)

def merge_output_problem(run_dir: Path, output_dir: Path) -> str | None:
    """Why the merged model cannot be written to ``output_dir`` (None when it can). The merge
    replaces the folder: the run's own ``merged`` folder when it holds only what a merge writes,
    any other folder only when it is empty (a model folder, the base model's say, is never replaced)."""
    run, target = run_dir.resolve(), output_dir.resolve()
    if target == run:
        return "is the run directory itself, whose weights must stay those it was trained to; choose another folder"
    if target in run.parents:
        return f"holds the run directory {run_dir}, which replacing it would delete; choose another folder"
    if problem := output_folder_problem(output_dir):
        return f"{problem}; choose another folder"
    names = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if target == (run / MERGED_DIRNAME).resolve():
        names = [name for name in names if not any(fnmatch.fnmatch(name, pattern) for pattern in MERGED_FILES)]
    if names:
        return (f"already holds files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}), which replacing "
                f"it would delete; merge into a new or empty folder (--output DIR), or remove it first")
    return None

def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target``; an existing ``target`` is removed only then."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=temporary_prefix(target), suffix=".old"))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)

def remove_stale_folders(target: Path) -> None:
    """Temporary folders beside ``target`` left by an earlier merge that was killed (never those of
    a merge still at work)."""
    for stale in stale_temporaries(target):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)

def merge_adapter(run_dir: str | Path, output_dir: str | Path | None = None, flag: str | None = None) -> Path:
    """Write base + LoRA merged into one plain model (with the tokenizer); returns its folder.

    It is written into a temporary folder beside ``output_dir`` and renamed into place once whole,
    so an interrupted merge leaves no loadable half-model. ``flag``: the option that gave
    ``output_dir``, for errors."""
    run_dir = Path(run_dir)
    if not is_adapter_dir(run_dir):
        raise HfClmError(f"{run_dir} holds no LoRA adapter ({ADAPTER_CONFIG}); nothing to merge")
    output_dir = Path(output_dir) if output_dir else run_dir / MERGED_DIRNAME
    if problem := merge_output_problem(run_dir, output_dir):
        raise HfClmError(f"{flag + ' ' if flag else ''}{output_dir} {problem}")
    merged = load_adapter_model(run_dir).merge_and_unload()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(output_dir)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=temporary_prefix(output_dir), suffix=".tmp"))
    try:
        merged.save_pretrained(staging)
        read_tokenizer(run_dir).save_pretrained(staging)
        (staging / MERGED_FROM).write_text(json_text({"adapter_sha256": weights_digests(run_dir)}), encoding="utf-8")
        with_umask_modes(staging)  # mkdtemp's 0700, safetensors' 0600
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Merged the adapter of %s into %s", run_dir, output_dir)
    return output_dir
