"""Protections of what a job writes and reads (docs/faults.md): file modes under the user's umask,
a damaged checkpoint named in one line, a full disk during a shard preparation or a merge."""

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import recipe_args, run_hf_clm, write_corpus

from hf_clm.training.checkpoints import checkpoint_problem

TINY = ("--max_steps", "2", "--save_steps", "2", "--eval_steps", "2")


def modes(root: Path) -> dict[str, int]:
    """Every file's and folder's permission bits under ``root`` (``root`` itself included)."""
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def wrong_modes(root: Path, umask: int) -> dict[str, str]:
    wanted = {True: 0o777 & ~umask, False: 0o666 & ~umask}
    return {name: oct(mode) for name, mode in modes(root).items()
            if mode != wanted[(root.parent / name).is_dir()]}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_everything_written_gets_the_umasks_modes(tmp_path, umask):
    """safetensors' save_file makes 0600 files and tempfile.mkdtemp 0700 folders: a finished run, its
    checkpoint, a LoRA run, its merge and prepared folders get the umask's modes all the same."""
    files = write_corpus(tmp_path / "corpus")
    with_umask = {"preexec_fn": lambda: os.umask(umask)}

    def hf_clm(*args):
        result = run_hf_clm(*args, env={"OMP_NUM_THREADS": "1"}, **with_umask)
        assert result.returncode == 0, result.stderr[-3000:]

    hf_clm("train", *recipe_args(files, tmp_path / "run", *TINY))
    hf_clm("train", *recipe_args(files, tmp_path / "lora", *TINY, "--model_name_or_path", str(tmp_path / "run"),
                                 "--train_tokenizer", "false", "--peft_method", "lora", "--lora_r", "2",
                                 "--merge_adapter", "true"))
    hf_clm("merge", str(tmp_path / "lora"), "--output", str(tmp_path / "merged-elsewhere"))
    hf_clm("prepare", *recipe_args(files, tmp_path / "unused", "--prepared_dataset", str(tmp_path / "blocks")))
    hf_clm("prepare", *recipe_args(files, tmp_path / "unused", "--prepared_dataset", str(tmp_path / "shards")),
           "--shard", "0", "--num_shards", "2")
    written = ["run", "lora", "merged-elsewhere", "blocks", "shards"]
    assert (tmp_path / "run" / "checkpoint-2" / "model.safetensors").is_file()
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "lora" / "merged" / "model.safetensors").is_file()
    problems = {name: wrong for name in written if (wrong := wrong_modes(tmp_path / name, umask))}
    assert not problems, problems


def test_a_checkpoint_with_flipped_bytes_is_named_in_one_line(finished_run, tmp_path):
    """The sizes match (auto picks it), the archive does not load: one line naming the checkpoint."""
    run_dir = Path(shutil.copytree(finished_run.run_dir, tmp_path / "run"))
    (run_dir / "perplexity.json").unlink()
    optimizer = run_dir / "checkpoint-4" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    header = data.find(b"PK\x03\x04", len(data) // 3)  # a member's header in the body: the size is unchanged
    data[header:header + 4] = bytes(4)
    optimizer.write_bytes(bytes(data))
    assert checkpoint_problem(optimizer.parent) is None  # every size check passes: auto would pick it
    result = run_hf_clm("train", *recipe_args(finished_run.files, run_dir, "--max_steps", "6", "--save_steps", "2",
                                              "--eval_steps", "6", "--resume_from_checkpoint",
                                              str(run_dir / "checkpoint-4")), env={"OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith(f"hf-clm: error: checkpoint {run_dir / 'checkpoint-4'} cannot be loaded (")
    assert "its files are damaged; resume from an earlier checkpoint" in lines[-1]


@pytest.mark.parametrize("limit", [8_000, 15_000, 20_000])
def test_a_full_disk_during_a_shard_preparation_leaves_one_line_and_no_half_shard(tmp_path, limit):
    """A shard reads its part alone, so the caches it writes first are as large as its blocks: a
    first shard preparation elsewhere fills the caches, and the limit falls on this one's own
    writes: the tokenizer (11.7 kB) at 8,000 bytes, the training blocks (19.6 kB) at 15,000; at
    20,000, with no caches yet, the part's cache (a full disk, not an unreadable corpus file)."""
    files = write_corpus(tmp_path / "corpus")  # new files: none of their caches exist yet
    if limit < 20_000:
        filled = run_hf_clm("prepare", *recipe_args(files, tmp_path / "unused", "--prepared_dataset",
                                                    str(tmp_path / "caches")), "--shard", "0", "--num_shards", "2")
        assert filled.returncode == 0, filled.stderr[-2000:]
    target = tmp_path / "shards"
    result = run_hf_clm("prepare", *recipe_args(files, tmp_path / "unused", "--prepared_dataset", str(target)),
                        "--shard", "0", "--num_shards", "2", fsize=limit, env={"OMP_NUM_THREADS": "1"})
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 0:  # the limit was enough for every file: the shard is whole
        assert (target / "shard-00000-of-00002.json").is_file()
        return
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("hf-clm: error: no space left")
    left = sorted(p.name for p in target.iterdir()) if target.exists() else []
    assert not [name for name in left if name.startswith((".tokenizer", "train-", "validation", "shard-"))], left


def test_a_full_disk_during_a_merge_leaves_one_line_and_no_half_model(finished_lora_run, tmp_path):
    run_dir = Path(shutil.copytree(finished_lora_run.run_dir, tmp_path / "run"))
    shutil.rmtree(run_dir / "merged")
    result = run_hf_clm("merge", str(run_dir), fsize=50_000, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("hf-clm: error: no space left")
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".merged", "merged"))) == []
