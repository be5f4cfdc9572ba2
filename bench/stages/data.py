"""Stage ``data``: corpus to blocks. In a fresh process each, the package's ``build_blocks`` against
the tokenizer's own batch encode (its limit) and ``datasets.map`` + run_clm.py's ``group_texts``
(``bench/data_prep.py``); then ``hf-clm prepare`` as a whole process against run_clm.py's data steps
(``bench/run_clm_way.py``), its memory at 4x the text, the tokenizer's limit as a whole process,
two shards side by side and the bytes each task of ``prepare --tasks N`` reads (``bench/prepare_scale.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import run_checked
from bench.rows import About, AtLeast, AtMost, Row, Within
from bench.stages import REPO, SHAKESPEARE, TOKENIZER


def rows(quick: bool, folder: Path) -> list[Row]:
    """Prepare 5 and 50 MB (build_blocks vs its limit and vs datasets.map); prepare memory; prepare
    55.8 MB, whole process, vs run_clm.py; memory at 4x the text; the limit as a whole process; 2 shards;
    the bytes each task of ``prepare --tasks N`` reads, N = 1, 2, 4."""
    return [*build_blocks_rows([0.2, 1] if quick else [5, 50], folder), prepare_process_row(quick, folder),
            *scale_rows(quick, folder), shards_row(quick, folder), *bytes_per_task_rows(quick, folder)]


def prepare_in_fresh_process(method: str, corpus: Path, block: int) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="bench-cache-"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "bench.data_prep", method, str(corpus), str(TOKENIZER), str(block)],
                         env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_blocks_rows(sizes: list[float], folder: Path) -> list[Row]:
    from bench.prepare_scale import repeated

    rows, package_rss = [], {}
    for size in sizes:
        corpus = repeated(SHAKESPEARE, folder, megabytes=size)
        result = {m: prepare_in_fresh_process(m, corpus, 1024) for m in ("limit", "conventional", "package")}
        package_rss[size] = result["package"]["peak_rss_mb"]
        stage = f"prepare {result['package']['text_bytes'] / 1e6:.0f} MB"
        package, limit, conventional = (result[m]["seconds"] for m in ("package", "limit", "conventional"))
        rows.append(Row(stage, "package vs tokenizer batch encode (limit)", limit / package, Within(1.3),
                        f"{package:.1f} s vs {limit:.1f} s"))
        rows.append(Row(stage, "package vs datasets.map + group_texts", conventional / package, AtLeast(2),
                        f"{conventional:.1f} s; blocks {result['package']['blocks']:,} vs "
                        f"{result['conventional']['blocks']:,} (run_clm drops each batch's tail)"))
    if len(sizes) > 1:
        small, large = package_rss[sizes[0]], package_rss[sizes[-1]]
        rows.append(Row("prepare memory", f"peak RSS {sizes[-1]:g} MB / {sizes[0]:g} MB of text", large / small,
                        AtMost(1.5), f"{large:.0f} MB vs {small:.0f} MB"))
    return rows


def timed_process(command: list[str], env: dict[str, str]) -> float:
    """Seconds from process start to exit."""
    start = time.perf_counter()
    run_checked(command, env=env, cwd=REPO)
    return time.perf_counter() - start


def prepare_process_row(quick: bool, folder: Path) -> Row:
    """``hf-clm prepare`` vs the run_clm.py way, each a whole process from start to exit with a cold
    cache: Tiny Shakespeare x 50 (55.8 MB), one document per line, the GPT-2 tokenizer, block 512,
    2 workers, 5% held out."""
    from bench.prepare_scale import BLOCK, WORKERS, cold_env, prepare_command, repeated

    corpus = repeated(SHAKESPEARE, folder, times=2 if quick else 50)
    package = timed_process(prepare_command(corpus, TOKENIZER, folder / "prepared-vs-run-clm"), cold_env(folder))
    conventional = timed_process([sys.executable, "-m", "bench.run_clm_way", str(corpus), str(TOKENIZER), BLOCK,
                                  WORKERS], cold_env(folder))
    return Row(f"prepare {corpus.stat().st_size / 1e6:.1f} MB, whole process",
               "hf-clm prepare vs run_clm.py's data steps", conventional / package, AtLeast(2),
               f"{package:.1f} s vs {conventional:.1f} s, start to exit, cold cache, block {BLOCK}, "
               f"{WORKERS} workers")


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def scale_rows(quick: bool, folder: Path) -> list[Row]:
    """``hf-clm prepare`` at 1x and 4x the text: the peak anonymous memory of its process tree, and
    each size against the tokenizer's limit as a whole process."""
    from bench.prepare_scale import BLOCK, WORKERS, scale_runs

    times = (1, 4) if quick else (50, 200)
    runs = scale_runs(SHAKESPEARE, TOKENIZER, folder, times)
    small, large = (runs[n] for n in times)
    rows = [Row("prepare memory, whole process",
                f"x{times[1]} vs x{times[0]} text ({large['text_mb']:.0f} vs {small['text_mb']:.0f} MB): "
                "peak anonymous memory of the process tree",
                large["peak_anon"] / small["peak_anon"], AtMost(1.3),
                f"{mib(large['peak_anon'])} vs {mib(small['peak_anon'])}; main process peak RSS (file pages "
                f"of mapped Arrow files included) {mib(large['peak_rss'])} vs {mib(small['peak_rss'])}; wall "
                f"{large['seconds']:.1f} s vs {small['seconds']:.1f} s "
                f"(x{large['seconds'] / small['seconds']:.2f} for x{times[1] // times[0]} text)")]
    for n in times:
        run = runs[n]
        rows.append(Row(f"prepare {run['text_mb']:.0f} MB, whole process",
                        "tokenizer's encode_batch alone (limit) vs hf-clm prepare", run["limit"] / run["seconds"],
                        Within(1.5), f"{run['seconds']:.1f} s vs {run['limit']:.1f} s, start to exit, {WORKERS} "
                                     f"workers / threads, block {BLOCK}"))
    return rows


def shards_row(quick: bool, folder: Path) -> Row:
    """Two ``--shard I --num_shards 2`` prepares side by side (one worker each) against one prepare
    with two workers, and how their blocks compare."""
    from bench.prepare_scale import (
        blocks_agreement,
        cold_env,
        measured_process,
        prepare_command,
        repeated,
        two_shards_seconds,
    )

    corpus = repeated(SHAKESPEARE, folder, times=1 if quick else 50)
    one = measured_process(prepare_command(corpus, TOKENIZER, folder / "one-shard"), cold_env(folder))
    two = two_shards_seconds(corpus, TOKENIZER, folder)
    return Row(f"prepare {corpus.stat().st_size / 1e6:.0f} MB in 2 shards, one host",
               "2 shards side by side (1 worker each) vs 1 prepare (2 workers)", one["seconds"] / two, None,
               f"{two:.1f} s vs {one['seconds']:.1f} s, start to exit; "
               + blocks_agreement(folder / "one-shard", folder / "two-shards"))


# a task reads its share of the corpus, 1% more at most, plus its boundary searches (16 KiB)
TASK_SHARE = About(1, "largest_bytes_read", "share_bytes", relative=0.01, absolute=16384)


def bytes_per_task_rows(quick: bool, folder: Path, tasks: tuple[int, ...] = (1, 2, 4)) -> list[Row]:
    """Bytes of the corpus each task of ``hf-clm prepare --tasks N`` reads (its shard's ``bytes_read``),
    one file of Tiny Shakespeare repeated, by lines, on this host: its share of the corpus, not the corpus."""
    from bench.prepare_scale import bytes_read_per_task, repeated

    corpus = repeated(SHAKESPEARE, folder, times=1 if quick else 50)
    size = corpus.stat().st_size
    rows = []
    for n in tasks:
        read = bytes_read_per_task(corpus, TOKENIZER, folder, n)
        rows.append(Row(f"prepare {size / 1e6:.1f} MB in {n} task{'s' if n > 1 else ''}, one host",
                        "largest bytes_read of a task / (corpus bytes / N)", max(read) / (size / n), TASK_SHARE,
                        "bytes per task: " + ", ".join(f"{b:,}" for b in read) + f" of {size:,}",
                        figures={"largest_bytes_read": max(read), "share_bytes": size / n}))
    return rows
