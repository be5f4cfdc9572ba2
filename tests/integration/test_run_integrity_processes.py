"""A run directory people can trust: nothing half-written, nothing secret, nothing silently wrong.

Kills are real SIGKILLs of real ``hf-clm`` processes and a full disk is a file-size limit
(RLIMIT_FSIZE, under which writes fail as they do on a full disk), also in a real process; the
rest calls the command line in process (``hf_clm_main``). The finished run these tests copy is the
session's (conftest's ``finished_run``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    ONE_THREAD,
    REPO,
    SHARED_DATA,
    hf_clm_command,
    recipe_args,
    requires_shared_data,
    run_hf_clm,
    subprocess_env,
)
from support.run_integrity import copy_of, last_line, train_args, truncate

from hf_clm.run.artifacts import finished_marker_problem
from hf_clm.run.files import LOCK_FILENAME, PERPLEXITY_FILENAME

WRITES = 300


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the kill point"
        time.sleep(0.01)


def start_training(files, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(hf_clm_command("train", *recipe_args(files, run_dir, *extra)), env=subprocess_env(ONE_THREAD),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

PEAK_SCRIPT = """
import resource, sys
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer
from hf_clm.data.blocks import build_blocks
from hf_clm.recipe.schema import DataArguments
text = open(sys.argv[2], encoding="utf-8").read()
docs = [text] if sys.argv[1] == "one" else text.split(". ")
raw = DatasetDict(train=Dataset.from_dict({"text": docs}), validation=Dataset.from_dict({"text": ["a b"] * 4}))
del text, docs
tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
build_blocks(raw, tokenizer, DataArguments(block_size=8))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_write_that_fails_on_a_full_disk_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "perplexity.json"
    path.write_text('{"perplexity": 3.0}\n')
    code = ("import signal, resource; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)); from hf_clm.run.artifacts import write_json; "
            f"write_json({{'perplexity': 2.0, 'padding': 'x' * 1000}}, {str(path)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert json.loads(path.read_text()) == {"perplexity": 3.0}
    assert [p.name for p in tmp_path.iterdir()] == ["perplexity.json"]


def test_two_processes_writing_one_file_at_once_end_with_one_whole_file_and_no_traceback(tmp_path):
    """Each writer used to remove every earlier temporary of the file, a live writer's among them."""
    path, go = tmp_path / "report.json", tmp_path / "go"
    code = ("import sys, time; from pathlib import Path; from hf_clm.run.artifacts import write_json\n"
            f"while not Path({str(go)!r}).exists(): time.sleep(0.01)\n"
            f"for n in range({WRITES}): write_json({{'writer': sys.argv[1], 'n': n, 'padding': 'x' * 20000}}, "
            f"{str(path)!r})")
    writers = [subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for name in ("a", "b")]
    time.sleep(3)  # both imported and waiting
    go.touch()
    results = [(writer.wait(timeout=300), writer.stderr.read()) for writer in writers]
    assert results == [(0, ""), (0, "")]
    last = json.loads(path.read_text())
    assert last["writer"] in ("a", "b") and last["n"] == WRITES - 1 and len(last["padding"]) == 20000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "report.json"]


def test_a_full_disk_during_training_is_one_line_and_a_rerun_finishes(corpus, tmp_path, train):
    run_dir = tmp_path / "run"
    # the model fits, the first checkpoint's optimizer does not; the progress bar is on, and is open then
    result = run_hf_clm(*train_args(corpus, run_dir, "--disable_tqdm", "false"), env=ONE_THREAD, fsize=200_000)
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line(result).startswith("hf-clm: error: writing ") and "is the disk full?" in last_line(result)
    assert not (run_dir / PERPLEXITY_FILENAME).exists()
    result = train(corpus, run_dir, "--resume_from_checkpoint", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert finished_marker_problem(run_dir) is None


def test_a_kill_while_extending_a_finished_run_leaves_no_finished_marker(finished, tmp_path, corpus):
    run_dir = copy_of(finished, tmp_path)
    process = start_training(corpus, run_dir, "--max_steps", "400", "--save_steps", "2", "--eval_steps", "400",
                             "--resume_from_checkpoint", "auto")
    wait_for(lambda: (run_dir / "checkpoint-6" / "trainer_state.json").is_file(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / PERPLEXITY_FILENAME).exists()


def test_a_second_training_into_a_busy_output_dir_is_refused_and_a_stale_lock_taken_over(corpus, tmp_path, train):
    run_dir = tmp_path / "run"
    # long enough to be still running when killed on any machine (a short one can finish first)
    first = start_training(corpus, run_dir, "--max_steps", "1000000", "--save_steps", "2", "--save_total_limit", "2",
                           "--eval_steps", "1000000")
    try:
        wait_for(lambda: (run_dir / "checkpoint-2" / "trainer_state.json").is_file(), first)
        second = train(corpus, run_dir, "--resume_from_checkpoint", "auto")
        assert second.returncode == 2
        assert f"output_dir {run_dir} is in use by pid {first.pid} on {socket.gethostname()}" in last_line(second)
        assert first.poll() is None, "the first run ended before the kill"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run_dir / LOCK_FILENAME).is_file()  # a SIGKILL leaves the lock behind
    third = train(corpus, run_dir, "--max_steps", "6", "--resume_from_checkpoint", "auto")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Taking over the stale lock" in third.stderr
    assert not (run_dir / LOCK_FILENAME).exists()


@requires_shared_data
def test_a_lora_adapter_records_its_base_model_and_loads_from_anywhere(tmp_path, hf_clm_main):
    run_dir = tmp_path / "lora"
    result = hf_clm_main("train", "recipes/lora-tiny-gpt2.yaml", "--output_dir", str(run_dir), "--max_steps", "2",
                    "--save_steps", "2", "--eval_steps", "2", "--max_train_samples", "200", "--merge_adapter", "false",
                    cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base).resolve() == (SHARED_DATA / "tiny-gpt2").resolve()
    result = hf_clm_main("generate", str(run_dir), "To be", "--max_new_tokens", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_damaged_caches_are_rebuilt(corpus, tmp_path):
    """Real processes: the cache files are cut short under this session's datasets cache, which no
    object of this process may still map."""
    import datasets.config

    args = recipe_args(corpus, tmp_path / "run", "--prepared_dataset", str(tmp_path / "blocks"))
    assert run_hf_clm("prepare", *args, env=ONE_THREAD).returncode == 0
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    arrows = [p for p in cache.rglob("*.arrow") if "text" in p.parts]
    tokenizers = list((cache / "hf_clm_tokenizers").rglob("tokenizer.json"))
    assert arrows and tokenizers
    for path in arrows + tokenizers:
        truncate(path)
    result = run_hf_clm("prepare", *args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Rebuilding" in result.stderr


@requires_shared_data
def test_one_long_line_needs_no_more_memory_than_the_same_text_in_lines(tmp_path):
    source = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text().replace("\n", " ")
    line = tmp_path / "line.txt"
    line.write_text((source * 10)[:8_000_000])  # 8 MB, one line
    peaks = {}
    for mode in ("lines", "one"):
        env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / f"cache-{mode}")}
        result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode, str(line), str(SHARED_DATA / "tiny-gpt2")],
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[mode] = int(result.stdout.split()[-1])
    assert peaks["one"] <= 1.5 * peaks["lines"], peaks
