"""``hf-clm prepare`` at the size users bring, each figure a whole process from start to exit with a cold
cache: Tiny Shakespeare repeated x50 (55.8 MB) and x200 (223 MB), one document per line, the GPT-2
tokenizer, block 512, 2 workers, 5% held out.

* memory: the peak of ``hf-clm prepare`` at 4x the text over its peak at 1x, sampled every 20 ms over
  every process of its tree: the main process's resident set (``VmHWM``) and the anonymous memory of
  the whole tree (what cannot be given back to the file it came from: the part that runs a machine
  out of memory). File pages of memory-mapped Arrow files count in ``VmHWM`` too: datasets maps every
  Arrow file it opens, and reading a table touches all of its pages; the kernel drops them under
  pressure, from the page cache they share.
* the tokenizer's own limit: ``python -m bench.prepare_scale limit TEXT TOKENIZER THREADS`` encodes the
  same documents with the Rust tokenizer's ``encode_batch`` on as many threads as prepare has workers,
  keeping no Python object per token, also as a whole process;
* two shards on one host (``--shard 0/1 --num_shards 2``, side by side, one worker each, a cache each as
  on two machines) against one ``prepare`` with two workers, and how their blocks compare.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
BLOCK, WORKERS, HELD_OUT = "512", "2", "5"


def repeated(shakespeare: Path, folder: Path, times: int | None = None, megabytes: float | None = None) -> Path:
    """Tiny Shakespeare ``times`` over, or repeated as often as it takes and cut to ``megabytes``
    (millions of characters), written to ``folder``."""
    text = shakespeare.read_text(encoding="utf-8")
    if megabytes is None:
        body, name = text * times, f"x{times}"
    else:
        size = int(megabytes * 1_000_000)
        body, name = (text * (size // len(text.encode()) + 1))[:size], f"{megabytes:g}mb"
    path = folder / f"shakespeare-{name}.txt"
    path.write_text(body, encoding="utf-8")
    return path


def memory_of(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(key + r":\s+(\d+)", status).group(1)) * 1024 for key in ("VmHWM", "RssAnon")}


def measured_process(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds from start to exit, the main process's peak resident set and the tree's peak
    anonymous memory (bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_anon = 0
    while process.poll() is None:
        try:
            peak_rss = max(peak_rss, memory_of(process.pid)["VmHWM"])
            anon = 0
            for pid in [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]:
                try:
                    anon += memory_of(pid)["RssAnon"]
                except (OSError, AttributeError):
                    pass
            peak_anon = max(peak_anon, anon)
        except (OSError, AttributeError, psutil.Error):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {process.returncode}:\n{err[-3000:]}")
    return {"seconds": wall, "peak_rss": peak_rss, "peak_anon": peak_anon, "stdout": out}


def cold_env(folder: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="bench-cache-", dir=folder),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true", **extra}


def prepare_command(corpus: Path, tokenizer: Path, target: Path, workers: str = WORKERS, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_clm", "prepare", "--train_files", str(corpus), "--sample_by", "line",
            "--tokenizer_name_or_path", str(tokenizer), "--train_tokenizer", "false", "--block_size", BLOCK,
            "--preprocessing_num_workers", workers, "--validation_split_percentage", HELD_OUT,
            "--prepared_dataset", str(target), "--output_dir", str(target.parent / "unused-run"), *extra]


def limit_process(corpus: Path, tokenizer: Path, folder: Path) -> dict[str, float]:
    return measured_process([sys.executable, "-m", "bench.prepare_scale", "limit", str(corpus), str(tokenizer),
                             WORKERS], cold_env(folder, RAYON_NUM_THREADS=WORKERS))


def scale_runs(shakespeare: Path, tokenizer: Path, folder: Path, times: tuple[int, ...]) -> dict[int, dict]:
    """For each of ``times``: ``hf-clm prepare`` of the text that many times over as a measured process
    (:func:`measured_process`), the seconds of the tokenizer's limit on it and its size in MB."""
    runs = {}
    for n in times:
        corpus = repeated(shakespeare, folder, times=n)
        runs[n] = measured_process(prepare_command(corpus, tokenizer, folder / f"prepared-x{n}"), cold_env(folder))
        runs[n]["limit"] = limit_process(corpus, tokenizer, folder)["seconds"]
        runs[n]["text_mb"] = corpus.stat().st_size / 1e6
    return runs


def shard_blocks(target: Path, shards: int):
    from datasets import concatenate_datasets, load_from_disk

    return concatenate_datasets([load_from_disk(str(target / f"train-{i:05d}-of-{shards:05d}")) for i in range(shards)])


def blocks_agreement(one: Path, sharded: Path) -> str:
    """How the two shards' blocks compare with one prepare's: equal up to shard 0's tail, then offset by it."""
    import numpy as np
    from datasets import load_from_disk

    whole = np.asarray(load_from_disk(str(one))["train"]["input_ids"]).reshape(-1)
    parts = np.asarray(shard_blocks(sharded, 2)["input_ids"]).reshape(-1)
    tokens = [json.loads((sharded / f"shard-{i:05d}-of-00002.json").read_text())["counts"]["train"]["tokens"]
              for i in range(2)]
    block = int(BLOCK)
    kept0 = tokens[0] - tokens[0] % block
    head_equal = bool((parts[:kept0] == whole[:kept0]).all())
    rest = parts[kept0:]
    overlap = min(len(rest), len(whole) - tokens[0])
    rest_equal = bool((rest[:overlap] == whole[tokens[0]:tokens[0] + overlap]).all())
    verdict = "as stated" if head_equal and rest_equal else "**differ beyond shard 0's tail**"
    return (f"blocks {len(parts) // block:,} vs {len(whole) // block:,}: {verdict} (shard 0's tail of "
            f"{tokens[0] % block} tokens dropped, shard 1's blocks start at its first document)")


def two_shards_seconds(corpus: Path, tokenizer: Path, folder: Path) -> float:
    """Wall seconds of ``hf-clm prepare --shard 0`` and ``--shard 1`` of 2 run side by side, one worker
    and a cold cache each, into ``folder / "two-shards"``."""
    start = time.perf_counter()
    shards = [subprocess.Popen(prepare_command(corpus, tokenizer, folder / "two-shards", "1", "--shard", str(i),
                                               "--num_shards", "2"),
                               env=cold_env(folder), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    for shard in shards:
        _, err = shard.communicate()
        if shard.returncode != 0:
            raise RuntimeError(f"a shard of the two-shard prepare exited {shard.returncode}:\n{err[-3000:]}")
    return time.perf_counter() - start


def bytes_read_per_task(corpus: Path, tokenizer: Path, folder: Path, n: int) -> list[int]:
    """``hf-clm prepare --tasks N`` of ``corpus`` on this host, one worker each: the bytes of the corpus
    each task read (its shard's ``bytes_read``). A task reads its byte range (about the corpus over N)
    plus its boundary searches, not the corpus."""
    target = folder / f"tasks-{n}"
    # one task is the one-machine preparation, which writes no shard: its shard of one stands for it
    parts = ["--executor", "local", "--tasks", str(n)] if n > 1 else ["--shard", "0", "--num_shards", "1"]
    measured_process(prepare_command(corpus, tokenizer, target, "1", *parts), cold_env(folder))
    return [json.loads((target / f"shard-{i:05d}-of-{n:05d}.json").read_text())["bytes_read"] for i in range(n)]


def limit_main(text_file: str, tokenizer_dir: str) -> dict:
    """The documents of ``text_file`` (one per non-empty line) through the Rust tokenizer's
    ``encode_batch``, counting tokens and keeping nothing; RAYON_NUM_THREADS sets the threads."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tokens = 0
    batch: list[str] = []
    with open(text_file, encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                batch.append(line.rstrip("\n"))
            if len(batch) == 10_000:
                tokens += sum(len(e) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
                batch = []
    tokens += sum(len(e) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
    return {"tokens": tokens}


if __name__ == "__main__":
    if sys.argv[1] != "limit":
        sys.exit("usage: python -m bench.prepare_scale limit TEXT_FILE TOKENIZER_DIR THREADS")
    os.environ["RAYON_NUM_THREADS"] = sys.argv[4]
    print(json.dumps(limit_main(sys.argv[2], sys.argv[3])))
