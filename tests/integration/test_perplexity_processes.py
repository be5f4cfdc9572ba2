"""``hf-clm perplexity`` under a launcher: two CPU processes (torchrun, gloo) score the text
together, each window once, and rank 0 alone prints and writes the figures of one process."""

import json
import sys
from pathlib import Path

import pytest
from conftest import ONE_THREAD, run_launch, subprocess_env

from hf_clm.evaluation.processes import Processes

pytestmark = pytest.mark.full  # torchrun launches of two processes

FIGURES = ("perplexity", "loss", "bits_per_byte", "bits_per_char", "word_perplexity", "byte_perplexity")
COUNTS = ("tokens", "bytes", "chars", "documents", "words")
PROBE = Path(__file__).parent.parent / "helpers" / "scoring_probe.py"


def test_batches_are_dealt_round_robin_and_every_one_is_scored_once():
    shares = [Processes(rank, 3).share(range(7)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Processes(2, 4).share(range(2)) == []  # more processes than batches: this one is idle


def perplexity_launch(processes: int, run_dir, data, output, *flags) -> tuple[list[dict], str, list[int]]:
    """The rows ``hf-clm perplexity --json`` printed, all the launch printed (the files written are
    listed on stderr), and the number of windows each process scored."""
    args = [str(run_dir), "--data", str(data), "--sample_by", "paragraph", "--json", "--output", str(output), *flags]
    record = output.parent / f"record-{output.name}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(PROBE), str(record), *args]
    result = run_launch(command, env=subprocess_env(ONE_THREAD), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    windows = [json.loads((record / f"rank{rank}.json").read_text())["windows"] for rank in range(processes)]
    return rows, result.stdout + result.stderr, windows


@pytest.mark.parametrize("convention, flags", [
    ("strided", ["--window", "16", "--stride", "8", "--batch_size", "3"]),  # many batches, overlapping windows
    ("rolling", ["--window", "16", "--batch_size", "3"]),
    ("strided", ["--window", "32", "--batch_size", "64", "--limit", "1"]),  # one batch: rank 1 scores nothing
], ids=["strided", "rolling", "an-idle-rank"])


def test_two_processes_give_the_figures_of_one_and_write_one_report(finished_run, tmp_path, convention, flags):
    data = finished_run.files["validation"]
    flags = ["--convention", convention, *flags]
    (one,), _, (alone,) = perplexity_launch(1, finished_run.run_dir, data, tmp_path / "one", *flags)
    (two,), printed, shares = perplexity_launch(2, finished_run.run_dir, data, tmp_path / "two", *flags)
    assert sum(shares) == alone  # each window scored once, by one of the processes
    assert shares[1] == 0 if "--limit" in flags else min(shares) > 0
    for key in FIGURES:
        assert (one.get(key) is None) == (two.get(key) is None), key
        if one.get(key) is not None:
            assert two[key] == pytest.approx(one[key], rel=1e-9), key
    assert {key: two.get(key) for key in COUNTS} == {key: one.get(key) for key in COUNTS}
    assert one["tokens"] > 0
    # rank 0 alone printed (one row, one list of files) and wrote the report
    assert printed.count('"model"') == 1 and printed.count("report.json") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    (saved,) = json.loads((tmp_path / "two" / "report.json").read_text())["models"]
    assert saved["bits_per_byte"] == pytest.approx(one["bits_per_byte"], rel=1e-9)
