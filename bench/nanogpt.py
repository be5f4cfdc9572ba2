"""nanoGPT's CPU baby GPT beside ``recipes/shakespeare-baby.yaml``, on the same machine, same text.

nanoGPT runs from a checkout given by path (``python -m bench --only nanogpt --nanogpt PATH``; the public
repository github.com/karpathy/nanoGPT, never copied into this project), with its README's CPU command,
on its own 90/10 character split of Tiny Shakespeare (its ``prepare.py``, fed the shared copy of the
text instead of a download). The package then trains the recipe with ``max_train_seconds`` set to
nanoGPT's wall time minus the package's own fixed costs (process start, tokenizer training, the
final evaluation and save: measured by a run with a budget of one second, and a second kept back for
their variation), on the same split: the
first 90% of the characters as one training document, the last 10% as validation. Both are scored
in bits per character over every character of the validation text, with the same windows (each
model's context, stride half of it): nanoGPT's ``ckpt.pt`` through its own ``model.py`` here, the
package's run through ``hf-clm perplexity``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent
# nanoGPT's README, "baby GPT" on a CPU.
NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
BUDGET_PROBE_SECONDS = 1.0
# Kept back from the budget: the fixed costs are measured once and vary by about a second run to run.
MARGIN_SECONDS = 1.0


def nanogpt_checkout(source: Path, folder: Path, shakespeare: Path) -> Path:
    """A working copy of the checkout with its character data prepared from the shared text."""
    work = folder / "nanoGPT"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".git", "out-*"))
    data = work / "data" / "shakespeare_char"
    shutil.copyfile(shakespeare, data / "input.txt")
    run_checked([sys.executable, "prepare.py"], cwd=data)
    return work


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    run_checked(command, **kwargs)
    return time.perf_counter() - start


def nanogpt_bits_per_char(work: Path) -> float:
    """nanoGPT's saved model over every character of its validation ids, windows of its block size
    with stride half of it (the first window scores every position, the others their second half)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(work))
    try:
        from model import GPT, GPTConfig
    finally:
        sys.path.pop(0)
    checkpoint = torch.load(work / "out-shakespeare-char" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    model.eval()
    ids = torch.from_numpy(np.fromfile(work / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64))
    window = checkpoint["model_args"]["block_size"]
    stride = window // 2
    total, scored = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, stride):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            inputs, targets = chunk[:-1], chunk[1:]
            logits, _ = model(inputs[None], targets[None])  # with targets it returns every position's logits
            logits = logits[0]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            first = 0 if start == 0 else window - stride
            total += float(losses[first:].sum())
            scored += len(losses) - first
            if start + window + 1 >= len(ids):
                break
    assert scored == len(ids) - 1, (scored, len(ids))
    return total / scored / math.log(2)


def split_text(shakespeare: Path, folder: Path) -> tuple[Path, Path]:
    text = shakespeare.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = folder / "nanogpt-train.txt", folder / "nanogpt-val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return train, val


def budget_recipe(folder: Path, train: Path, val: Path, seconds: float, name: str) -> Path:
    values = yaml.safe_load((REPO / "recipes" / "shakespeare-baby.yaml").read_text())
    values.update(train_files=[str(train)], validation_files=[str(val)], sample_by="document",
                  max_train_seconds=round(seconds, 1), output_dir=str(folder / name))
    values.pop("max_steps", None)
    recipe = folder / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    return recipe


def package_run(folder: Path, train: Path, val: Path, seconds: float, name: str) -> float:
    recipe = budget_recipe(folder, train, val, seconds, name)
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="bench-cache-", dir=folder)}
    return timed([sys.executable, "-m", "hf_clm", "train", str(recipe), "--disable_tqdm", "true"], env=env, cwd=REPO)


def package_bits_per_char(run_dir: Path, val: Path) -> float:
    out = run_checked([sys.executable, "-m", "hf_clm", "perplexity", str(run_dir), "--data", str(val), "--json"],
                      cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["bits_per_char"]
