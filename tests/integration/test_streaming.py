"""Streaming reads every file type the in-memory path reads, with every sample_by."""

import json

import pandas as pd
import pytest
from conftest import make_documents, recipe_args

from hf_clm.commands.cli import main

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


def test_a_resumed_stream_continues_where_the_checkpoint_left_it(tmp_path):
    """Resume skips the blocks the checkpoint consumed (Trainer's skip of the first batches) and trains
    on the rest: the same weights and losses as the run that was not interrupted. A resume that read
    the stream from its start again (training twice on the first blocks) ends elsewhere."""
    import shutil

    from safetensors.torch import load_file

    train = write_documents(tmp_path / "train", "txt-paragraph", make_documents(60, seed=1))
    validation = write_documents(tmp_path / "validation", "txt-paragraph", make_documents(10, seed=2))
    files = {"train": train[0], "validation": validation[0]}
    flags = ["--sample_by", "paragraph", "--streaming", "true", "--max_steps", "8", "--save_steps", "4",
             "--eval_steps", "8", "--logging_steps", "1", "--shuffle_buffer_size", "16"]
    assert main(["train", *recipe_args(files, tmp_path / "whole", *flags)]) == 0
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    assert main(["train", *recipe_args(files, tmp_path / "resumed", *flags, "--resume_from_checkpoint", "auto")]) == 0
    whole, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert all(whole[k].equal(resumed[k]) for k in whole)

    def losses(name):
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["loss"] for e in history if "loss" in e and e["step"] > 4}

    assert losses("resumed") == losses("whole") and len(losses("whole")) == 4
