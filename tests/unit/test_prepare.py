"""hf-clm prepare: blocks on disk ahead of a launch, and train reading them (or refusing them)."""

import json

import pytest
from conftest import lock_held_by_another_process, recipe_args, run_in_process, write_corpus
from datasets import load_from_disk
from support.prepare import prepare_argv

from hf_clm.commands.cli import main
from hf_clm.data.provenance import saved_fingerprint
from hf_clm.recipe.parser import parse_recipe


def flat(blocks) -> list[int]:
    return [token for row in blocks["input_ids"] for token in row]


def parts_less_tails(whole: list[int], parts: list[list[int]], tokens: list[int], block: int) -> bool:
    """Part I's blocks are the one-machine stream from part I's first token, cut from there: what
    differs is each part's tail (fewer than block_size tokens), dropped instead of carried on."""
    start = 0
    for part, count in zip(parts, tokens):
        expected = whole[start:start + count - count % block]
        if len(part) != count - count % block or part[:len(expected)] != expected:
            return False
        start += count
    return True


def test_prepare_writes_blocks_tokenizer_and_description(prepared):
    root, files, target, stdout = prepared
    description = json.loads((target / "prepared.json").read_text())
    blocks = load_from_disk(str(target))
    assert description["block_size"] == 32 and description["tokenizer"].startswith("byte-level BPE, vocab 400")
    assert len(blocks["train"]) == description["counts"]["train"]["blocks"] > 0
    assert blocks["train"].column_names == ["input_ids"]  # no labels/attention_mask copies
    assert (target / "tokenizer" / "tokenizer.json").is_file()
    assert f"{description['counts']['train']['blocks']:,} blocks" in stdout


@pytest.mark.parametrize("flag,value,message", [
    ("--block_size", "16", "has blocks of 32 tokens but the recipe's block_size is 16"),
    ("--vocab_size", "300", "was tokenized with 'byte-level BPE, vocab 400"),
])


def test_train_refuses_a_prepared_dataset_made_differently(prepared, capsys, flag, value, message):
    root, files, target, _ = prepared
    code = main(["train", *prepare_argv(files, root / "refused", target, flag, value)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (root / "refused" / "model.safetensors").exists()


def test_train_refuses_a_missing_or_unfinished_prepared_dataset(prepared, capsys, tmp_path):
    root, files, _, _ = prepared
    assert main(["train", *prepare_argv(files, tmp_path / "run", tmp_path / "nowhere")]) == 2
    assert "does not exist; run 'hf-clm prepare RECIPE' first" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["train", *prepare_argv(files, tmp_path / "run", tmp_path / "half")]) == 2
    assert "holds no prepared.json" in capsys.readouterr().err


def test_two_shards_are_the_one_machine_blocks_but_for_each_shards_tail(sharded):
    """Each shard reads its byte range of the training and of the validation file; its blocks are the
    one-machine blocks of those documents, less its last partial block."""
    _, _, one_machine, target = sharded
    one = load_from_disk(str(one_machine))
    descriptions = [json.loads((target / f"shard-0000{i}-of-00002.json").read_text()) for i in range(2)]
    for split in ("train", "validation"):
        parts = [flat(load_from_disk(str(target / f"{split}-0000{i}-of-00002"))) for i in range(2)]
        tokens = [d["counts"][split]["tokens"] for d in descriptions]
        assert sum(tokens) == json.loads((one_machine / "prepared.json").read_text())["counts"][split]["tokens"]
        assert parts_less_tails(flat(one[split]), parts, tokens, 32), split
    assert descriptions[0]["counts"]["train"]["tokens"] % 32 > 0  # the case worth testing: a partial block


def test_train_reads_every_shard_in_order(sharded):
    _, files, _, target = sharded
    recipe = parse_recipe(prepare_argv(files, target.parent / "run", target))
    from hf_clm.data.prepare import prepared_data

    data = prepared_data(recipe)
    shards = [load_from_disk(str(target / f"train-0000{i}-of-00002")) for i in range(2)]
    assert flat(data.train) == flat(shards[0]) + flat(shards[1])
    assert data.counts["train"].blocks == len(data.train) and data.counts["train"].documents == 120


def test_sharded_sets_that_train_refuses(sharded, tmp_path, capsys):
    """An incomplete set names the missing shards; a shard of another split or block size is refused
    when it is written; a second writer of one shard meets the shard's lock."""
    import shutil

    root, files, _, target = sharded
    partial = tmp_path / "partial"
    shutil.copytree(target, partial)
    (partial / "shard-00001-of-00002.json").unlink()
    assert main(["train", *prepare_argv(files, tmp_path / "run", partial)]) == 2
    err = capsys.readouterr().err
    assert (f"holds 1 of its 2 shards; missing shard 1: run 'hf-clm prepare RECIPE --prepared_dataset {partial} "
            "--shard 1 --num_shards 2' (a shard") in err
    assert not (tmp_path / "run").exists()
    argv = prepare_argv(files, root / "unused", partial)
    other_split = run_in_process("prepare", *argv, "--shard", "2", "--num_shards", "3")
    assert other_split.returncode == 2 and "prepare every shard with --num_shards 2" in other_split.stderr
    other_block = run_in_process("prepare", *argv, "--block_size", "16", "--shard", "1", "--num_shards", "2")
    assert other_block.returncode == 2 and "with blocks of 32 tokens, not 16" in other_block.stderr
    other_tokenizer = run_in_process("prepare", *argv, "--vocab_size", "300", "--shard", "1", "--num_shards", "2")
    assert other_tokenizer.returncode == 2 and "made with 'byte-level BPE, vocab 400" in other_tokenizer.stderr
    fewer = run_in_process("prepare", *argv, "--max_train_samples", "60", "--shard", "1", "--num_shards", "2")
    assert fewer.returncode == 2 and "max_train_samples takes the first documents of the whole corpus" in fewer.stderr
    by_line = run_in_process("prepare", *argv, "--sample_by", "line", "--shard", "1", "--num_shards", "2")
    assert by_line.returncode == 2 and "holds shard 0 of another corpus" in by_line.stderr
    over_blocks = run_in_process("prepare", *argv, "--vocab_size", "300", "--tokenizer_only")
    assert over_blocks.returncode == 2 and "holds blocks made with another tokenizer" in over_blocks.stderr
    with lock_held_by_another_process(partial, part="00001-of-00002") as holder:
        busy = run_in_process("prepare", *argv, "--shard", "1", "--num_shards", "2")
    assert busy.returncode == 2 and f"shard 1 of prepared_dataset {partial} is in use by pid {holder.pid}" in busy.stderr
    assert not (partial / "shard-00001-of-00002.json").exists()


def test_train_refuses_blocks_whose_tokenizer_was_replaced(prepared, tmp_path, capsys):
    """The folder's tokenizer is checked against the digest its blocks were made with, also when the
    recipe trains its BPE (where the recipe's description alone would match)."""
    import shutil

    root, files, target, _ = prepared
    copy = tmp_path / "blocks"
    shutil.copytree(target, copy)
    other = run_in_process("prepare", *prepare_argv(files, root / "unused", tmp_path / "other", "--vocab_size", "300"))
    assert other.returncode == 0, other.stderr[-2000:]
    shutil.rmtree(copy / "tokenizer")
    shutil.copytree(tmp_path / "other" / "tokenizer", copy / "tokenizer")
    assert main(["train", *prepare_argv(files, tmp_path / "run", copy)]) == 2
    assert "is not the one its blocks were made with" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_refuses_a_corpus_other_than_the_folders(prepared, tmp_path, capsys):
    """--train_files X beside prepared_dataset would train on the folder's blocks and name X in
    recipe.yaml, the report and the card."""
    root, files, target, _ = prepared
    other = write_corpus(tmp_path / "other", step=3)
    argv = prepare_argv(files, tmp_path / "run", target, "--train_files", str(other["train"]))
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert f"prepared_dataset {target} was made from train_files {files['train']}" in err
    assert f"but the recipe names train_files {other['train']}" in err
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_shards_of_two_corpora_of_as_many_documents_are_refused(sharded, tmp_path):
    import shutil

    root, files, _, target = sharded
    mixed = tmp_path / "mixed"
    shutil.copytree(target, mixed)
    other = write_corpus(tmp_path / "other", step=3)  # 120 other documents, the same validation file
    argv = recipe_args(other, root / "unused", "--prepared_dataset", str(mixed), "--validation_files",
                       str(files["validation"]))
    result = run_in_process("prepare", *argv, "--shard", "1", "--num_shards", "2")
    assert result.returncode == 2 and "holds shard 0 of another corpus (other files, sizes" in result.stderr
    assert json.loads((mixed / "shard-00001-of-00002.json").read_text())["corpus_digest"] == \
        json.loads((mixed / "shard-00000-of-00002.json").read_text())["corpus_digest"]


def test_a_shard_folder_replaced_by_another_shards_blocks_is_refused(sharded, tmp_path, capsys):
    import shutil

    _, files, _, target = sharded
    swapped = tmp_path / "swapped"
    shutil.copytree(target, swapped)
    shutil.rmtree(swapped / "train-00000-of-00002")
    shutil.copytree(swapped / "train-00001-of-00002", swapped / "train-00000-of-00002")
    assert main(["train", *prepare_argv(files, tmp_path / "run", swapped)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"prepared_dataset {swapped / 'train-00000-of-00002'} holds" in err and "blocks where its description" \
        " says" in err or "another fingerprint" in err


def test_flipped_token_ids_are_refused_when_blocks_are_loaded(prepared, tmp_path, capsys):
    """Bytes flipped in an Arrow file make ids the embedding cannot look up ('index out of range in
    self' at the first step): found when the blocks are read, in one line naming the folder."""
    import shutil

    import numpy as np

    root, files, target, _ = prepared
    damaged = tmp_path / "damaged"
    shutil.copytree(target, damaged)
    arrow = next((damaged / "train").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    ids = np.frombuffer(data, dtype=np.int32, count=(len(data) - 4096) // 4, offset=2048).copy()
    position = 2048 + 4 * int(np.flatnonzero((ids > 3) & (ids < 400))[100])  # one token id in the body
    data[position:position + 4] = np.int32(1_000_000).tobytes()
    arrow.write_bytes(bytes(data))
    assert main(["train", *prepare_argv(files, tmp_path / "run", damaged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"prepared_dataset {damaged / 'train'} holds token id 1000000, outside the tokenizer's " in err
    assert "ids: its Arrow files are damaged" in err


def test_a_pretrained_tokenizer_at_another_path_is_the_same_tokenizer_for_a_shard(tmp_path, bpe_tokenizer):
    files = write_corpus(tmp_path / "corpus")
    bpe_tokenizer.save_pretrained(tmp_path / "tok-a")
    bpe_tokenizer.save_pretrained(tmp_path / "tok-b")
    target = tmp_path / "blocks"
    for shard, path in (("0", "tok-a"), ("1", "tok-b")):
        argv = recipe_args(files, tmp_path / "unused", "--prepared_dataset", str(target), "--train_tokenizer",
                           "false", "--tokenizer_name_or_path", str(tmp_path / path))
        result = run_in_process("prepare", *argv, "--shard", shard, "--num_shards", "2")
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_folder_records_what_it_was_made_from(prepared, sharded):
    """The corpus keys and digest, the blocks' count and fingerprint per split: whole and per shard
    (each shard also the digest of its own documents' texts)."""
    root, files, target, _ = prepared
    whole = json.loads((target / "prepared.json").read_text())
    assert whole["corpus"]["train_files"] == [str(files["train"])] and whole["corpus_digest"]
    assert set(whole["fingerprints"]) == {"train", "validation"}
    shards = [json.loads((sharded[3] / f"shard-0000{i}-of-00002.json").read_text()) for i in range(2)]
    assert shards[0]["corpus_digest"] == shards[1]["corpus_digest"] == whole["corpus_digest"]
    assert shards[0]["shard_digest"] != shards[1]["shard_digest"]
    for i, shard in enumerate(shards):
        folder = sharded[3] / f"train-0000{i}-of-00002"
        assert len(load_from_disk(str(folder))) == shard["counts"]["train"]["blocks"]
        assert saved_fingerprint(folder) == shard["fingerprints"]["train"]


def test_a_shard_of_a_part_without_documents_writes_nothing(prepared, tmp_path):
    """Refused before shard 0 trains and saves the tokenizer: a new folder is not even created."""
    root, files, _, _ = prepared
    target = tmp_path / "many"
    result = run_in_process("prepare", *prepare_argv(files, root / "unused", target), "--shard", "0",
                            "--num_shards", "100000")
    assert result.returncode == 2 and "part 0 of 100000 of the corpus holds no training document" in result.stderr
    assert not target.exists()


# ---- locks: writers of one folder, as real concurrent processes -----------------------------------

def test_a_whole_prepare_and_a_shard_never_write_one_folder_at_once(prepared, tmp_path):
    root, files, _, _ = prepared
    target = tmp_path / "blocks"
    argv = prepare_argv(files, root / "unused", target)
    with lock_held_by_another_process(target, part="00000-of-00002") as shard_writer:
        whole = run_in_process("prepare", *argv)  # would remove the shard being written
        other_shard = run_in_process("prepare", *argv, "--shard", "1", "--num_shards", "2")
        tokenizer = run_in_process("prepare", *argv, "--tokenizer_only")
    assert whole.returncode == 2 and f"prepared_dataset {target} is in use by pid {shard_writer.pid}" in whole.stderr
    assert other_shard.returncode == 2 and "needs the tokenizer" in other_shard.stderr  # past the lock, side by side
    assert tokenizer.returncode == 0, tokenizer.stderr[-2000:]
    assert not (target / "prepared.json").exists()
    with lock_held_by_another_process(target) as whole_writer:
        shard = run_in_process("prepare", *argv, "--shard", "0", "--num_shards", "2")
        tokenizer = run_in_process("prepare", *argv, "--tokenizer_only")
    for result in (shard, tokenizer):  # would delete prepared.json and train/ under the whole preparation
        assert result.returncode == 2 and f"is in use by pid {whole_writer.pid}" in result.stderr
    assert not (target / "shard-00000-of-00002.json").exists()
