"""Shared by tests/unit/test_prepare.py and tests/integration/test_prepare_processes.py."""

import pytest
from conftest import recipe_args, run_in_process, write_corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("prepare")
    files = write_corpus(root)
    target = root / "blocks"
    flags = recipe_args(files, root / "unused", "--max_steps", "10", "--eval_steps", "10")
    result = run_in_process("prepare", *flags, "--prepared_dataset", str(target))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, files, target, result.stdout


def prepare_argv(files, output_dir, target, *extra):
    return recipe_args(files, output_dir, "--max_steps", "10", "--eval_steps", "10",
                       "--prepared_dataset", str(target), *extra)


@pytest.fixture(scope="module")
def sharded(prepared, tmp_path_factory):
    """The fixture's corpus prepared again in two shards, shard 1 first: it refuses to start
    before the trained tokenizer exists, which --tokenizer_only makes."""
    root, files, one_machine, _ = prepared
    target = tmp_path_factory.mktemp("sharded") / "blocks"
    argv = prepare_argv(files, root / "unused", target)
    early = run_in_process("prepare", *argv, "--shard", "1", "--num_shards", "2")
    assert early.returncode == 2 and f"run 'hf-clm prepare RECIPE --prepared_dataset {target} --tokenizer_only' once " \
        "first" in early.stderr
    assert run_in_process("prepare", *argv, "--tokenizer_only").returncode == 0
    for shard in ("1", "0"):
        result = run_in_process("prepare", *argv, "--shard", shard, "--num_shards", "2")
        assert result.returncode == 0, result.stderr[-3000:]
    return root, files, one_machine, target
