"""Each task of ``hf-clm prepare --tasks N`` reads only its part of the corpus: runs of files when
there are at least N, byte ranges cut at document boundaries otherwise; together the parts hold the
corpus's documents exactly once, and the held-out documents are the one-machine validation split."""

import json
import os

import pytest
from conftest import make_documents, recipe_args, run_in_process

from hf_clm.data.corpus import load_corpus
from hf_clm.data.parts import SCAN_BYTES, load_corpus_part
from hf_clm.recipe.schema import DataArguments

pytestmark = pytest.mark.full
TASKS = 3
# A boundary moves a part's end to the next document start (at most one document further); finding
# it reads up to 256 bytes back and SCAN_BYTES on, at each of a part's two ends.
SLACK = 2 * (256 + SCAN_BYTES)


def without_validation_files(argv: list[str]) -> list[str]:
    at = argv.index("--validation_files")
    return argv[:at] + argv[at + 2:]


def corpus_files(folder, files: int) -> list[str]:
    folder.mkdir()
    documents = make_documents(360, seed=3)
    paths = []
    for i in range(files):
        path = folder / f"part-{i}.txt"
        path.write_text("\n\n".join(documents[i::files]) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("files", [3, 1])
def test_each_task_reads_its_part_and_the_parts_hold_every_document_once(tmp_path, offline_hf_cache, files):
    paths = corpus_files(tmp_path / "corpus", files)
    data = DataArguments(train_files=paths, sample_by="paragraph", validation_split_percentage=10)
    argv = without_validation_files(recipe_args({"train": paths[0], "validation": ""}, tmp_path / "unused",
                                                "--max_steps", "10"))
    argv[argv.index("--train_files") + 1:argv.index("--train_files") + 2] = paths
    one, three = tmp_path / "one", tmp_path / "three"
    for target, extra in ((one, []), (three, ["--executor", "local", "--tasks", str(TASKS), "--workers", "1"])):
        result = run_in_process("prepare", *argv, "--validation_split_percentage", "10", "--prepared_dataset",
                                str(target), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    descriptions = [json.loads((three / f"shard-{i:05d}-of-{TASKS:05d}.json").read_text()) for i in range(TASKS)]
    size = sum(os.path.getsize(p) for p in paths)
    longest = max(len(d.encode()) for d in make_documents(360, seed=3)) + 2
    for i, description in enumerate(descriptions):
        if files >= TASKS:  # a run of files: its own file, whole
            assert description["bytes_read"] == os.path.getsize(paths[i]), (i, description["read"])
        else:  # a byte range: a third of the bytes, up to the boundary search
            assert abs(description["bytes_read"] - size / TASKS) <= longest + SLACK, (i, description["read"])
    assert max(d["bytes_read"] for d in descriptions) < 0.4 * size
    whole = json.loads((one / "prepared.json").read_text())["counts"]
    for split in ("train", "validation"):  # every document in one part: the same documents and tokens
        parts = [d["counts"][split] for d in descriptions]
        assert sum(p["documents"] for p in parts) == whole[split]["documents"], split
        assert sum(p["tokens"] for p in parts) == whole[split]["tokens"], split

    corpus = load_corpus(data)
    parts = [load_corpus_part(data, i, TASKS).splits for i in range(TASKS)]
    for split in ("train", "validation"):  # the documents themselves, in corpus order, exactly once
        assert [t for part in parts for t in part[split]["text"]] == list(corpus[split]["text"]), split
