"""Fault sweep: SIGKILL a training at many points and fill the disk at several sizes, then rerun
with ``resume_from_checkpoint: auto`` and check the run directory is trustworthy.

Usage: python tests/helpers/fault_sweep.py WORK_DIR

A fault point survives when, after the fault, (a) the folder holds no finished-run marker unless
that marker is valid for the weights beside it, and (b) the rerun exits 0 with a valid marker and
weights byte-identical to an uninterrupted run. Prints one line per point and the counts.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import file_size_limit, hf_clm_command, recipe_args, subprocess_env, write_corpus  # noqa: E402

from hf_clm.run.artifacts import PERPLEXITY_FILENAME, finished_marker_problem  # noqa: E402

FLAGS = ("--max_steps", "40", "--save_steps", "10", "--eval_steps", "20")
ENV = subprocess_env({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})


def command(files, run_dir: Path, *extra: str) -> list[str]:
    return hf_clm_command("train", *recipe_args(files, run_dir, *FLAGS, *extra))


def kill_when(files, run_dir: Path, condition) -> str:
    process = subprocess.Popen(command(files, run_dir), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        if condition(run_dir):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed"
        time.sleep(0.002)
    return "ended first"


def full_disk(files, run_dir: Path, limit: int) -> str:
    result = subprocess.run(command(files, run_dir), env=ENV, capture_output=True, text=True,
                            preexec_fn=file_size_limit(limit))
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return f"exit {result.returncode}: {line[:100]}"


def exists(name):
    return lambda d: (d / name).exists()


def main(work: Path) -> None:
    files = write_corpus(work / "corpus")
    reference = work / "reference"
    subprocess.run(command(files, reference), env=ENV, check=True, capture_output=True)
    weights = (reference / "model.safetensors").read_bytes()
    kills = {
        "lock taken": exists(".hf_clm.lock"), "recipe written": exists("recipe.yaml"),
        "checkpoint-10 folder made": exists("checkpoint-10"),
        "checkpoint-10 weights": exists("checkpoint-10/model.safetensors"),
        "checkpoint-10 optimizer": exists("checkpoint-10/optimizer.pt"),
        "checkpoint-10 complete": exists("checkpoint-10/trainer_state.json"),
        "checkpoint-20 folder made": exists("checkpoint-20"),
        "checkpoint-30 optimizer": exists("checkpoint-30/optimizer.pt"),
        "checkpoint-40 folder made": exists("checkpoint-40"),
        "checkpoint-40 complete": exists("checkpoint-40/trainer_state.json"),
        "final weights": exists("model.safetensors"), "trainer state": exists("trainer_state.json"),
        "report": exists("report.md"), "curves": exists("curves_by_steps.png"),
    }
    faults = [(f"SIGKILL at {name}", lambda d, c=condition: kill_when(files, d, c)) for name, condition in kills.items()]
    faults += [(f"full disk at {limit:,} bytes per file", lambda d, n=limit: full_disk(files, d, n))
               for limit in (20_000, 120_000, 200_000, 400_000)]
    survived = 0
    for index, (name, fault) in enumerate(faults):
        run_dir = work / f"fault-{index}"
        what = fault(run_dir)
        marker = run_dir / PERPLEXITY_FILENAME
        honest = not marker.exists() or finished_marker_problem(run_dir) is None
        rerun = subprocess.run(command(files, run_dir, "--resume_from_checkpoint", "auto"), env=ENV,
                               capture_output=True, text=True)
        ok = honest and rerun.returncode == 0 and finished_marker_problem(run_dir) is None and \
            (run_dir / "model.safetensors").read_bytes() == weights
        survived += ok
        print(f"{'survived' if ok else 'FAILED  '} {name} ({what}; marker honest: {honest}; rerun exit "
              f"{rerun.returncode})", flush=True)
        if not ok:
            print(rerun.stderr[-1500:])
    print(f"faults tried {len(faults)}, survived {survived}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
