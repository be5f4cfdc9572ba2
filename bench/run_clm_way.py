"""The data half of transformers' examples/pytorch/language-modeling/run_clm.py, as a whole process:
what a user of that script waits for before the first training step.

It imports what run_clm.py imports, loads the text files with ``load_dataset("text")`` (the
validation split as run_clm.py makes it when there is none: two more loads with ``train[:P%]`` and
``train[P%:]``), tokenizes with ``tokenizer(examples["text"])`` in ``datasets.map`` with
``num_proc`` workers, and groups with run_clm.py's ``group_texts`` (labels copied) in a second map.
Nothing is saved beyond datasets' own cache, as in run_clm.py.

``python -m bench.run_clm_way TEXT_FILE TOKENIZER BLOCK_SIZE WORKERS [VALIDATION_PERCENT]``
"""

from __future__ import annotations

import sys

import datasets  # noqa: F401  (run_clm.py's imports, as they cost the user)
import evaluate  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from datasets import load_dataset
from transformers import AutoTokenizer, Trainer, TrainingArguments  # noqa: F401

from bench.data_prep import group_texts


def main(text_file: str, tokenizer_name: str, block_size: int, workers: int, validation_percent: int = 5) -> int:
    data_files = {"train": text_file}
    raw = load_dataset("text", data_files=data_files, keep_linebreaks=True)
    if "validation" not in raw:
        raw["validation"] = load_dataset("text", data_files=data_files, split=f"train[:{validation_percent}%]",
                                         keep_linebreaks=True)
        raw["train"] = load_dataset("text", data_files=data_files, split=f"train[{validation_percent}%:]",
                                    keep_linebreaks=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=workers, remove_columns=["text"],
                        desc="Running tokenizer on dataset")

    grouped = tokenized.map(group_texts, batched=True, num_proc=workers, fn_kwargs={"block_size": block_size},
                            desc=f"Grouping texts in chunks of {block_size}")
    print({name: len(split) for name, split in grouped.items()})
    return 0


if __name__ == "__main__":
    text, tok, block, workers, *rest = sys.argv[1:]
    sys.exit(main(text, tok, int(block), int(workers), *(int(r) for r in rest)))
