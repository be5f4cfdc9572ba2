"""Shared by tests/unit/test_mixture.py and tests/integration/test_mixture_processes.py."""

import random
from pathlib import Path

import yaml
from conftest import make_documents


def digit_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(1000)) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


def write_sources(root: Path, words: int = 400, digits: int = 40) -> dict[str, Path]:
    """A large source of English words and a small one of numbers (about 10x fewer tokens)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"words": root / "words.txt", "digits": root / "digits.txt"}
    files["words"].write_text("\n\n".join(make_documents(words, seed=1)) + "\n", encoding="utf-8")
    files["digits"].write_text("\n\n".join(digit_documents(digits, seed=2)) + "\n", encoding="utf-8")
    return files


def mixture_recipe(root: Path, files: dict[str, Path], output_dir: Path, **changes) -> Path:
    values = {"mixture": [{"train_files": str(files["words"]), "weight": 3},
                          {"train_files": str(files["digits"]), "weight": 1}],
              "sample_by": "paragraph", "train_tokenizer": True, "vocab_size": 400, "block_size": 16,
              "n_layer": 1, "n_head": 2, "n_embd": 16, "max_steps": 500, "per_device_train_batch_size": 8,
              "learning_rate": 1e-2, "eval_steps": 500, "save_steps": 500, "logging_steps": 10, "seed": 0,
              "output_dir": str(output_dir), "disable_tqdm": True, **changes}
    path = root / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path
