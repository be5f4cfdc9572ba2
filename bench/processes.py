"""Several processes on this host (torchrun, CPU, gloo): what they cost and what they gain.

* ``hf-clm perplexity`` with 2 processes against 1: each a whole ``torchrun`` process from start to
  exit, the same model and text; the figures must agree (bits per byte to 1e-9 relative).
* ``max_train_seconds`` under a launcher: the clock's reading of rank 0, broadcast to every process
  once per optimizer step (``hf_clm.training.time_budget.rank_zero_reading``), timed per call.

``python -m bench.processes broadcast CALLS`` is the worker of the second row (run under torchrun).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def torchrun(processes: int, *command: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *command]


def scoring_model(folder: Path, tokenizer: Path, quick: bool) -> Path:
    """A randomly initialised GPT-2-shaped model with the real GPT-2 tokenizer, saved as a folder
    ``hf-clm perplexity`` loads (the figures do not matter, only the work)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    model_dir = folder / ("perplexity-model-quick" if quick else "perplexity-model")
    tok = AutoTokenizer.from_pretrained(tokenizer)
    sizes = {"n_layer": 1, "n_head": 2, "n_embd": 32} if quick else {"n_layer": 4, "n_head": 4, "n_embd": 256}
    config = GPT2Config(vocab_size=len(tok), n_positions=256, **sizes)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def timed_perplexity(processes: int, model_dir: Path, corpus: Path) -> tuple[float, dict]:
    """Seconds of a whole ``hf-clm perplexity`` launch of ``processes`` processes, and its row."""
    command = torchrun(processes, "-m", "hf_clm", "perplexity", str(model_dir), "--data", str(corpus),
                       "--sample_by", "paragraph", "--window", "256", "--stride", "128", "--batch_size", "8", "--json")
    start = time.perf_counter()
    result = run_checked(command, env={**os.environ, **ONE_THREAD}, cwd=REPO)
    seconds = time.perf_counter() - start
    return seconds, json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))


def perplexity_processes(quick: bool, corpus: Path, tokenizer: Path, folder: Path) -> dict:
    """Seconds of one and of two processes scoring the same text, and their two rows."""
    model_dir = scoring_model(folder, tokenizer, quick)
    one_seconds, one = timed_perplexity(1, model_dir, corpus)
    two_seconds, two = timed_perplexity(2, model_dir, corpus)
    return {"one_seconds": one_seconds, "two_seconds": two_seconds, "one": one, "two": two}


def broadcast_microseconds(calls: int, folder: Path) -> float:
    """The median microseconds of one broadcast of the clock's reading between 2 processes."""
    record = folder / "broadcast.json"
    run_checked(torchrun(2, "-m", "bench.processes", "broadcast", str(calls), str(record)),
                env={**os.environ, **ONE_THREAD}, cwd=REPO)
    return json.loads(record.read_text())["median_microseconds"]


def time_broadcasts(calls: int, record: Path) -> None:
    """Under torchrun: ``calls`` readings shared from rank 0, each timed; rank 0 writes the median."""
    from accelerate import PartialState

    from hf_clm.training.time_budget import rank_zero_reading

    state = PartialState(cpu=True)
    share = rank_zero_reading(state)
    for _ in range(20):  # the group's first calls set up its connections
        share(1.0, 0.5)
    took = []
    for call in range(calls):
        start = time.perf_counter()
        used, mean = share(float(call), 0.5)
        took.append(time.perf_counter() - start)
        assert used == float(call) and mean == 0.5
    if state.is_main_process:
        record.write_text(json.dumps({"median_microseconds": 1e6 * statistics.median(took), "calls": calls}))


if __name__ == "__main__":
    if sys.argv[1:2] != ["broadcast"] or len(sys.argv) != 4:
        sys.exit("usage: python -m bench.processes broadcast CALLS RECORD (under torchrun)")
    time_broadcasts(int(sys.argv[2]), Path(sys.argv[3]))
