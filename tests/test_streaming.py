"""Streaming reads every file type the in-memory path reads, with every sample_by."""

import json

import pandas as pd
import pytest
from conftest import make_documents, recipe_args

from hf_clm.cli import main

pytestmark = pytest.mark.full  # a training per case

BLOCKS_PER_STEP = 8  # recipe_args: batch 8 on one process


def write_documents(folder, kind: str, documents: list[str]) -> list[str]:
    """The documents as files of ``kind`` (text kinds as one file per sample_by unit)."""
    folder.mkdir(parents=True)
    if kind == "txt-document":
        paths = [folder / f"doc{i}.txt" for i in range(len(documents))]
        for path, text in zip(paths, documents):
            path.write_text(text)
        return [str(folder)]
    path = folder / f"data.{kind.split('-')[0]}"
    if kind == "txt-paragraph":
        path.write_text("\n\n".join(documents))
    elif kind == "txt-line":
        path.write_text("\n".join(documents) + "\n\n\n")  # blank lines are no document
    elif kind == "json":
        path.write_text(json.dumps([{"text": d} for d in documents]))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    elif kind == "csv":
        pd.DataFrame({"text": documents}).to_csv(path, index=False)
    else:
        pd.DataFrame({"text": documents}).to_parquet(path)
    return [str(path)]


@pytest.mark.parametrize("kind", ["txt-document", "txt-paragraph", "txt-line", "json", "jsonl", "csv", "parquet"])
def test_a_stream_of_every_file_type_and_sample_by_trains(tmp_path, kind):
    train = write_documents(tmp_path / "train", kind, make_documents(60, seed=1))
    validation = write_documents(tmp_path / "validation", kind, make_documents(10, seed=2))
    sample_by = kind.split("-")[1] if kind.startswith("txt") else "document"
    argv = recipe_args({"train": train[0], "validation": validation[0]}, tmp_path / "run", "--sample_by", sample_by,
                       "--streaming", "true", "--max_steps", "3", "--eval_steps", "3")
    assert main(["train", *argv]) == 0
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["train_tokens_seen"] == 3 * BLOCKS_PER_STEP * 32 and summary["tokens"] > 0
