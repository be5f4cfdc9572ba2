"""Corpus -> blocks, three ways, each measured in a fresh process (own datasets cache, own peak RSS).

* ``limit``: the fast tokenizer's own batch encode of the same documents (no datasets, no grouping);
* ``conventional``: ``datasets.map`` with ``tokenizer(texts)`` then run_clm.py's ``group_texts``
  (concatenate each map batch with ``itertools.chain``, cut into blocks, copy ``labels``), written
  here from run_clm.py's documented behaviour;
* ``package``: hf_clm's ``build_blocks``.

Worker: ``python -m bench.data_prep METHOD CORPUS_TXT TOKENIZER_DIR BLOCK_SIZE`` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path


def documents(corpus_txt: str):
    from datasets import load_dataset

    return load_dataset("text", data_files={"train": corpus_txt}, sample_by="paragraph", keep_linebreaks=True)["train"]


def limit(docs, tokenizer, block_size: int) -> int:
    tokens = 0
    backend = tokenizer.backend_tokenizer
    for batch in docs.iter(batch_size=1000):
        tokens += sum(len(e.ids) + 1 for e in backend.encode_batch_fast(batch["text"], add_special_tokens=False))
    return tokens // block_size


def group_texts(examples, block_size: int):
    """run_clm.py's ``group_texts``: concatenate a map batch, cut it into blocks (dropping the
    batch's tail), copy ``labels``."""
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated[list(examples.keys())[0]])
    total_length = (total_length // block_size) * block_size
    result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
              for k, t in concatenated.items()}
    result["labels"] = result["input_ids"].copy()
    return result


def conventional(docs, tokenizer, block_size: int) -> int:
    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = docs.map(tokenize_function, batched=True, remove_columns=["text"])
    return len(tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": block_size}))


def package(docs, tokenizer, block_size: int) -> int:
    from datasets import DatasetDict

    from hf_clm.data.blocks import build_blocks
    from hf_clm.recipe.schema import DataArguments

    blocks, _ = build_blocks(DatasetDict(train=docs), tokenizer, DataArguments(block_size=block_size))
    return len(blocks["train"])


METHODS = {"limit": limit, "conventional": conventional, "package": package}


def cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*.arrow") if "text" not in p.parts[-3:-1])


def main(method: str, corpus_txt: str, tokenizer_dir: str, block_size: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    import hf_clm.data.blocks  # noqa: F401  (imports are not what is measured)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = documents(corpus_txt)
    start = time.perf_counter()
    blocks = METHODS[method](docs, tokenizer, block_size)
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, "blocks": blocks, "text_bytes": os.path.getsize(corpus_txt),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bench-cache-"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    method, corpus, tok, block = sys.argv[1:5]
    print(json.dumps(main(method, corpus, tok, int(block))))
