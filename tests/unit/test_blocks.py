from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import make_documents
from datasets import Dataset, DatasetDict

import hf_clm.data.blocks
from hf_clm.data.blocks import DocumentTokenizer, build_blocks, group_into_blocks, token_stream
from hf_clm.data.corpus import load_corpus
from hf_clm.recipe.schema import DataArguments


def test_group_into_blocks_concatenates_and_cuts():
    blocks, tail = group_into_blocks({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]}, 4)
    assert blocks["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert tail["input_ids"].tolist() == [9, 10]


def test_group_into_blocks_exact_multiple_and_short_input():
    blocks, tail = group_into_blocks({"input_ids": [[1, 2], [3, 4]]}, 2)
    assert blocks["input_ids"].tolist() == [[1, 2], [3, 4]] and tail["input_ids"].size == 0
    blocks, tail = group_into_blocks({"input_ids": [[1, 2, 3]]}, 8)
    assert blocks["input_ids"].shape == (0, 8) and tail["input_ids"].tolist() == [1, 2, 3]
    blocks, tail = group_into_blocks({"input_ids": []}, 8)
    assert blocks["input_ids"].shape == (0, 8)


def test_group_into_blocks_carrying_the_tail_loses_nothing():
    docs = [list(range(i * 10, i * 10 + n)) for i, n in enumerate([3, 7, 2, 9, 5, 1, 8])]
    stream = [t for d in docs for t in d]
    rows, tail = [], []
    for batch in (docs[:2], docs[2:5], docs[5:]):
        blocks, rest = group_into_blocks({"input_ids": [tail, *batch]}, 4)
        rows.extend(blocks["input_ids"].tolist())
        tail = rest["input_ids"]
    assert [t for row in rows for t in row] == stream[: len(stream) // 4 * 4]
    assert tail.tolist() == stream[len(stream) // 4 * 4:]


def test_group_into_blocks_handles_every_column_and_rejects_bad_size():
    blocks, _ = group_into_blocks({"input_ids": [[1, 2, 3]], "labels": [[4, 5, 6]]}, 3)
    assert blocks["labels"].tolist() == [[4, 5, 6]]
    with pytest.raises(ValueError):
        group_into_blocks({"input_ids": [[1]]}, 0)


def corpus(n_train=300, n_val=40) -> DatasetDict:
    train = make_documents(n_train, seed=11)
    train[5] = ""  # an empty document contributes nothing, not even an EOS
    return DatasetDict(train=Dataset.from_dict({"text": train}),
                       validation=Dataset.from_dict({"text": make_documents(n_val, seed=12)}))


@pytest.mark.parametrize("workers", [None, 2])
def test_no_tokens_lost_between_map_batches_or_workers(bpe_tokenizer, workers):
    raw = corpus()
    data = DataArguments(block_size=37, tokenize_batch_size=16, preprocessing_num_workers=workers)
    blocks, counts = build_blocks(raw, bpe_tokenizer, data)
    eos = bpe_tokenizer.eos_token_id
    for name in ("train", "validation"):
        expected = [t for text in raw[name]["text"] if text
                    for t in bpe_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]]
        got = np.asarray(blocks[name]["input_ids"])
        assert counts[name].tokens == len(expected)
        assert counts[name].dropped == len(expected) % 37 < 37  # only the split's final tail
        assert counts[name].kept + counts[name].dropped == counts[name].tokens
        assert got.shape == (len(expected) // 37, 37)
        assert got.ravel().tolist() == expected[: got.size]  # same tokens, same order
        assert (got == eos).sum() == sum(1 for t in expected[: got.size] if t == eos)


@pytest.mark.parametrize("prefix", [[], [3], [3, 4]])
def test_each_document_is_its_prefix_its_ids_and_eos_also_in_pieces(bpe_tokenizer, monkeypatch, prefix):
    monkeypatch.setattr(hf_clm.data.blocks, "PIECE_CHARS", 200)  # long documents are encoded in pieces
    monkeypatch.setattr(hf_clm.data.blocks, "ENCODE_GROUP_CHARS", 500)  # and pieces in several encode calls
    documents = make_documents(30, seed=5)
    texts = [documents[0], "", None, " ", " ".join(documents[1:15]), *documents[15:], ""]
    assert max(len(t or "") for t in texts) > 200
    framing = DocumentTokenizer(bpe_tokenizer)
    framing.prefix = prefix
    ids, offsets = framing.ids_and_offsets(texts)
    assert len(offsets) == len(texts) + 1
    for text, start, stop in zip(texts, offsets[:-1], offsets[1:]):
        expected = [*prefix, *bpe_tokenizer(text, add_special_tokens=False)["input_ids"],
                    bpe_tokenizer.eos_token_id] if text else []
        assert ids[start:stop].tolist() == expected


def test_token_stream_keeps_every_token(bpe_tokenizer):
    raw = corpus(n_train=10, n_val=3)
    stream = token_stream(raw["validation"], bpe_tokenizer, DataArguments())
    expected = [t for text in raw["validation"]["text"]
                for t in bpe_tokenizer(text)["input_ids"] + [bpe_tokenizer.eos_token_id]]
    assert stream.tolist() == expected


def arrow_files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.arrow")}


def test_second_identical_run_reads_the_cache(tmp_path, bpe_tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"text": "{d}"}}\n' for d in make_documents(200, seed=13)))
    data = DataArguments(train_files=[str(path)], block_size=16)
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    build_blocks(load_corpus(data), bpe_tokenizer, data)
    after_first = arrow_files(cache)
    build_blocks(load_corpus(data), bpe_tokenizer, data)
    assert arrow_files(cache) == after_first  # nothing tokenized, grouped or written again
    changed = DataArguments(train_files=[str(path)], block_size=17)
    build_blocks(load_corpus(changed), bpe_tokenizer, changed)
    assert len(set(arrow_files(cache)) - set(after_first)) == 2  # regrouped (2 splits), not retokenized
