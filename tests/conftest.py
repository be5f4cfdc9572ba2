"""Shared fixtures: an isolated offline HF cache, small generated corpora, a trained tokenizer."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"public test data not found at {SHARED_DATA}")


@pytest.fixture(scope="session", autouse=True)
def offline_hf_cache(tmp_path_factory):
    """Every test runs offline against its own Hugging Face caches (never the user's)."""
    home = tmp_path_factory.mktemp("hf_home")
    os.environ.update(HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"), HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_CACHE = Path(home / "datasets")
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import, possibly before this fixture
    yield home


WORDS = ("the cat sat on a mat while dogs ran past quick brown foxes and birds sang over green hills "
         "under blue skies near old stone walls by the river").split()


def make_documents(n: int, seed: int = 0, words: int = 60, step: int = 7) -> list[str]:
    """Deterministic pseudo-English documents of varied length, with learnable structure: each
    word is followed by one of two fixed successors (a model can beat a unigram baseline);
    another ``step`` gives other successors, i.e. a different corpus over the same words."""
    rng = random.Random(seed)
    documents = []
    for _ in range(n):
        index, text = rng.randrange(len(WORDS)), []
        for _ in range(rng.randint(words // 2, words * 2)):
            text.append(WORDS[index])
            index = (index * step + rng.choice((1, 2))) % len(WORDS)
        documents.append(" ".join(text) + ".")
    return documents


@pytest.fixture
def text_files(tmp_path) -> dict[str, Path]:
    """A training and a validation .txt file (one document per paragraph)."""
    return write_corpus(tmp_path)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE trained by the package on a generated corpus."""
    from datasets import Dataset

    from hf_clm.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(Dataset.from_dict({"text": make_documents(200, seed=3)}), vocab_size=400)


def recipe_args(text_files: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    """CLI flags for a seconds-long from-scratch run on the generated text files."""
    return ["--train_files", str(text_files["train"]), "--validation_files", str(text_files["validation"]),
            "--sample_by", "paragraph", "--train_tokenizer", "true", "--vocab_size", "400",
            "--block_size", "32", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
            "--max_steps", "30", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
            "--eval_steps", "15", "--save_steps", "15", "--logging_steps", "5",
            "--output_dir", str(output_dir), "--seed", "0", "--disable_tqdm", "true", *extra]


def write_corpus(root: Path, step: int = 7, train_documents: int = 120) -> dict[str, Path]:
    """A training and a validation .txt file of generated documents under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"train": root / "train.txt", "validation": root / "valid.txt"}
    files["train"].write_text("\n\n".join(make_documents(train_documents, seed=1, step=step)) + "\n", encoding="utf-8")
    files["validation"].write_text("\n\n".join(make_documents(20, seed=2, step=step)) + "\n", encoding="utf-8")
    return files
