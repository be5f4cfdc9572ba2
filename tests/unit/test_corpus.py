import json
import random
import zlib

import pandas as pd
import pytest
from datasets import Dataset

from hf_clm.data.corpus import load_corpus, stdlib_files
from hf_clm.data.heldout import hold_out_by_hash, is_stdlib_validation_file
from hf_clm.errors import HfClmError
from hf_clm.recipe.schema import DataArguments


def test_txt_paragraphs_with_explicit_validation(text_files):
    corpus = load_corpus(DataArguments(train_files=[str(text_files["train"])], sample_by="paragraph",
                                       validation_files=[str(text_files["validation"])]))
    assert len(corpus["train"]) == 120 and len(corpus["validation"]) == 20
    assert corpus["train"].column_names == ["text"]


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_structured_formats_and_text_column(tmp_path, suffix):
    rows = [{"body": f"document number {i}", "id": i} for i in range(50)]
    path = tmp_path / f"data.{suffix}"
    frame = pd.DataFrame(rows)
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    corpus = load_corpus(DataArguments(train_files=[str(path)], text_column="body",
                                       validation_split_percentage=10))
    # no validation split: the documents whose CRC-32 is below 10% of 2**32, in corpus order
    documents = [f"document number {i}" for i in range(50)]
    held = [d for d in documents if zlib.crc32(d.encode()) < 0.10 * 2**32]
    assert 0 < len(held) < 50
    assert corpus["validation"]["text"] == [d for d in documents if d in held]
    assert corpus["train"]["text"] == [d for d in documents if d not in held]


def test_globs_and_directories(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(f"file {i}\n")
    (tmp_path / "notes.md").write_text("a file of any suffix is text\n")
    (tmp_path / ".hidden").write_text("hidden files are skipped\n")
    by_glob = load_corpus(DataArguments(train_files=[str(tmp_path / "part*.txt")], validation_split_percentage=6))
    by_dir = load_corpus(DataArguments(train_files=[str(tmp_path)], validation_split_percentage=6))
    assert sorted([*by_glob["train"]["text"], *by_glob["validation"]["text"]]) == ["file 0\n", "file 1\n", "file 2\n"]
    assert sorted([*by_dir["train"]["text"], *by_dir["validation"]["text"]]) == [
        "a file of any suffix is text\n", "file 0\n", "file 1\n", "file 2\n"]
    assert by_glob["validation"]["text"] == by_dir["validation"]["text"] == ["file 0\n"]  # crc32 / 2**32: 0.051


def test_text_files_without_suffixes_train_and_the_held_out_split_does_not_follow_file_order(tmp_path):
    """Debian's license folder: files without suffixes; the ones sorting last must not all be held out."""
    licenses = tmp_path / "LICENSES"
    licenses.mkdir()
    for name in ("Apache-2.0", "GPL-3", "MIT"):
        (licenses / name).write_text("\n\n".join(f"{name} paragraph {i}: the software is provided as is."
                                                 for i in range(40)))
    paragraphs = [f"{name} paragraph {i}: the software is provided as is." for name in ("Apache-2.0", "GPL-3", "MIT")
                  for i in range(40)]
    held = sum(zlib.crc32(p.encode()) < 0.10 * 2**32 for p in paragraphs)
    for train_files in ([str(licenses)], [str(licenses / "*")]):
        corpus = load_corpus(DataArguments(train_files=train_files, sample_by="paragraph"))
        assert len(corpus["validation"]) == held and len(corpus["train"]) == 120 - held
        for name in ("Apache-2.0", "GPL-3", "MIT"):
            assert any(t.startswith(name) for t in corpus["train"]["text"]), name
        assert len({t.split()[0] for t in corpus["validation"]["text"]}) > 1


def test_max_samples(text_files):
    corpus = load_corpus(DataArguments(train_files=[str(text_files["train"])], sample_by="paragraph",
                                       max_train_samples=7, max_eval_samples=3))
    assert (len(corpus["train"]), len(corpus["validation"])) == (7, 3)


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(HfClmError, match="train_files: '.*nope.txt' does not exist"):
        load_corpus(DataArguments(train_files=[str(tmp_path / "nope.txt")]))
    with pytest.raises(HfClmError, match=r"matches no file"):
        load_corpus(DataArguments(train_files=[str(tmp_path / "*.jsonl")]))


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "a", "id": 1}\n' * 20)
    with pytest.raises(HfClmError, match="text_column 'text' is not a column.*content, id"):
        load_corpus(DataArguments(train_files=[str(path)]))


def test_non_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait\n" * 3)
    with pytest.raises(HfClmError, match=r"latin1.txt: byte 3 \(0xe9\) is not valid UTF-8"):
        load_corpus(DataArguments(train_files=[str(path)]))


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(HfClmError, match="empty"):
        load_corpus(DataArguments(train_files=[str(path)], validation_files=[str(path)]))


def test_stdlib_split_is_file_level_deterministic_and_disjoint():
    corpus = load_corpus(DataArguments(builtin_corpus="python-stdlib", max_train_samples=5, max_eval_samples=5))
    _, files = stdlib_files()
    held_out = [f for f in files if is_stdlib_validation_file(f, 10)]
    assert 0.05 < len(held_out) / len(files) < 0.15
    assert len(corpus["train"]) == len(corpus["validation"]) == 5
    assert not set(corpus["train"]["text"]) & set(corpus["validation"]["text"])
    assert all("test" not in f.split("/") for f in files)


def test_dataset_name_goes_through_load_dataset_with_its_own_splits(tmp_path):
    """The Hub code path (datasets.load_dataset(name)), pointed at a local dataset folder."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(f'{{"content": "train {i}"}}\n' for i in range(30)))
    (folder / "validation.jsonl").write_text("".join(f'{{"content": "valid {i}"}}\n' for i in range(4)))
    corpus = load_corpus(DataArguments(dataset_name=str(folder), text_column="content"))
    assert corpus["train"]["text"][:2] == ["train 0", "train 1"] and len(corpus["train"]) == 30
    assert corpus["validation"]["text"] == [f"valid {i}" for i in range(4)]


def test_byte_order_mark_and_blank_lines_are_not_text(tmp_path):
    marked = tmp_path / "marked.txt"
    marked.write_bytes("\ufefffirst paragraph\n\nsecond paragraph\n".encode())
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n\ntwo\n\n\nthree\n")
    corpus = load_corpus(DataArguments(train_files=[str(marked)], validation_files=[str(lines)],
                                       sample_by="paragraph"))
    assert corpus["train"][0]["text"].startswith("first")
    by_line = load_corpus(DataArguments(train_files=[str(lines)], validation_files=[str(marked)], sample_by="line"))
    # one document per line, its newline replaced by EOS; a blank line is an empty document (no EOS)
    assert [t for t in by_line["train"]["text"] if t] == ["one", "two", "three"]
    assert set(t for t in by_line["train"]["text"] if not t.strip()) <= {""}


def test_reading_local_files_draws_no_download_or_generation_bars(text_files, capfd):
    import datasets

    datasets.logging.set_verbosity_error()  # as hf-clm sets it without --verbose
    try:
        load_corpus(DataArguments(train_files=[str(text_files["train"])], sample_by="paragraph"))
    finally:
        datasets.logging.set_verbosity_warning()
    err = capfd.readouterr().err
    assert "Generating train split" not in err and "Downloading data" not in err
    assert datasets.is_progress_bar_enabled()  # the tokenizing bars that follow still show


def test_blank_lines_never_take_the_held_out_places(tmp_path):
    text = tmp_path / "play.txt"
    text.write_text("\n\n".join(f"line {i} of the play" for i in range(100)) + "\n")  # as many blank lines as lines
    corpus = load_corpus(DataArguments(train_files=[str(text)], sample_by="line", validation_split_percentage=5))
    held = [f"line {i} of the play" for i in range(100) if zlib.crc32(f"line {i} of the play".encode()) < 0.05 * 2**32]
    assert corpus["validation"]["text"] == held and held
    assert "" in corpus["train"]["text"]


@pytest.mark.parametrize("num_proc", [None, 2])
def test_the_held_out_split_is_decided_per_document_by_its_hash(num_proc):
    """A document is held out when its CRC-32 is below the share of 2**32: the same documents in any
    order, under any worker count, in any part of the corpus; repeated texts land on one side."""
    rng = random.Random(0)
    words = [f"line {i}" for i in range(300)] + [""]
    texts = [rng.choice(words) for _ in range(20_000)]
    train, validation = hold_out_by_hash(Dataset.from_dict({"text": texts}), 7, num_proc=num_proc)
    held = {t for t in words if t and zlib.crc32(t.encode()) * 100 < 7 * 2**32}
    assert validation["text"] == [t for t in texts if t in held]
    assert train["text"] == [t for t in texts if t not in held]
    assert 0.04 < len(held) / 300 < 0.10
    shuffled = rng.sample(texts, len(texts))
    parts = [list(hold_out_by_hash(Dataset.from_dict({"text": shuffled[i::3]}), 7)[1]["text"]) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(validation["text"])


def test_sample_by_paragraph_is_exactly_a_split_on_two_newlines(tmp_path):
    """The rule the help states: text.split('\\n\\n') after reading \\r\\n as \\n, empty pieces dropped."""
    from hf_clm.data.corpus import load_corpus
    from hf_clm.recipe.schema import DataArguments

    text = ("first paragraph\nwith two lines\n\nsecond  \n\n\nthird starts with a newline\n\n\n\n"
            "fourth after an empty piece\r\n\r\nfifth, from CRLF\n \nstill fifth (a space is no blank line)\n\n")
    path = tmp_path / "paragraphs.txt"
    path.write_bytes(text.encode())
    data = DataArguments(train_files=[str(path)], validation_files=[str(path)], sample_by="paragraph")
    expected = [piece for piece in text.replace("\r\n", "\n").split("\n\n") if piece]
    assert load_corpus(data)["validation"]["text"] == expected
    assert expected[2] == "\nthird starts with a newline" and len(expected) == 5


def test_a_corpus_too_small_for_any_held_out_document_fails_in_one_line(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("\n\n".join(["a", "b", "c"]) + "\n")
    assert not any(zlib.crc32(t.encode()) < 0.01 * 2**32 for t in "abc")
    with pytest.raises(HfClmError, match=r"the corpus has 3 documents, too few to hold out 1% for validation"):
        load_corpus(DataArguments(train_files=[str(text)], sample_by="paragraph", validation_split_percentage=1))
