"""Fault sweep: SIGKILL a training at many points and fill the disk at several sizes, then rerun
with ``resume_from_checkpoint: auto`` and check the run directory is trustworthy; then the
protections of docs/faults.md under real faults: concurrent writers of one folder, a full disk
during a shard preparation and a merge, damaged bytes read back, and file modes under two umasks.

Run by hand (it trains dozens of seconds-long runs and takes many minutes):

    PYTHONPATH=. python tests/helpers/fault_sweep.py WORK_DIR

A fault point survives when, after the fault, (a) the folder holds no finished-run marker unless
that marker is valid for the weights beside it, and (b) the rerun exits 0 with a valid marker and
weights byte-identical to an uninterrupted run. A protection survives when the faulty job ends in
one ``hf-clm: error:`` line (no traceback), leaves nothing half-written, and the folder is usable
by the next job. Prints one line per point (survived / FAILED, what happened) and then

    faults tried N, survived S
"""

import os
import signal
import stat
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
    protections = protection_faults(work, files)
    for name, ok, what in protections:
        survived += ok
        print(f"{'survived' if ok else 'FAILED  '} {name} ({what})", flush=True)
    print(f"faults tried {len(faults) + len(protections)}, survived {survived}")


def hf_clm(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(hf_clm_command(*args), env=ENV, capture_output=True, text=True, **kwargs)


def one_line(result: subprocess.CompletedProcess) -> bool:
    lines = result.stderr.strip().splitlines()
    return result.returncode == 2 and "Traceback" not in result.stderr and bool(lines) and \
        lines[-1].startswith("hf-clm: error:")


def prepare_args(files, target: Path) -> list[str]:
    return recipe_args(files, target.parent / "unused", *FLAGS, "--prepared_dataset", str(target))


def protection_faults(work: Path, files) -> list[tuple[str, bool, str]]:
    """(name, survived, what happened) for each protection under its fault."""
    results = []
    # concurrent writers of one folder: each job meets another holding the folder (a real process)
    for held_part, argv, name in ((None, ["--shard", "0", "--num_shards", "2"], "a shard under a whole prepare"),
                                  (None, ["--tokenizer_only"], "--tokenizer_only under a whole prepare"),
                                  ("00001-of-00002", [], "a whole prepare beside a shard being written")):
        target = work / f"race-{len(results)}"
        target.mkdir()
        (target / "keep.txt").write_text("another job's work\n")
        code = ("import sys; from hf_clm.run.locks import folder_lock\n"
                f"with folder_lock({str(target)!r}, 'prepared_dataset', part={held_part!r}):\n"
                "    print('held', flush=True); sys.stdin.read()")
        holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=ENV)
        holder.stdout.readline()
        result = hf_clm("prepare", *prepare_args(files, target), *argv)
        holder.stdin.close()
        holder.wait()
        untouched = sorted(p.name for p in target.iterdir()) == ["keep.txt"]
        results.append((name, one_line(result) and "in use by" in result.stderr and untouched,
                        f"exit {result.returncode}, folder untouched: {untouched}"))
    # a full disk during a shard preparation (a fresh datasets cache: every map is written), then the rerun
    for limit in (20_000, 80_000):
        target = work / f"full-shard-{limit}"
        fresh = {**ENV, "HF_DATASETS_CACHE": str(work / f"cache-{limit}")}
        result = subprocess.run(hf_clm_command("prepare", *prepare_args(files, target), "--shard", "0",
                                               "--num_shards", "2"), env=fresh, capture_output=True, text=True,
                                preexec_fn=file_size_limit(limit))
        left = [p.name for p in target.iterdir() if p.name.startswith((".tokenizer", "train-", "validation"))] \
            if target.exists() else []
        rerun = subprocess.run(hf_clm_command("prepare", *prepare_args(files, target), "--shard", "0",
                                              "--num_shards", "2"), env=fresh, capture_output=True, text=True)
        whole = result.returncode == 0 and (target / "shard-00000-of-00002.json").is_file()  # the limit was enough
        results.append((f"full disk at {limit:,} bytes in a shard preparation", (whole or one_line(result) and not left)
                        and rerun.returncode == 0, f"exit {result.returncode}, left {left}, rerun {rerun.returncode}"))
    # a full disk during a merge
    lora = work / "lora"
    trained = hf_clm("train", *recipe_args(files, lora, *FLAGS, "--max_steps", "2", "--model_name_or_path",
                                           str(work / "reference"), "--train_tokenizer", "false", "--peft_method",
                                           "lora", "--lora_r", "2"))
    for limit in (30_000, 100_000):
        result = hf_clm("merge", str(lora), preexec_fn=file_size_limit(limit))
        left = [p.name for p in lora.iterdir() if p.name.startswith(".merged")]
        results.append((f"full disk at {limit:,} bytes in a merge", trained.returncode == 0 and one_line(result)
                        and not left and not (lora / "merged").exists(), f"exit {result.returncode}, left {left}"))
    # damaged bytes read back: a prepared Arrow file, a checkpoint archive whose sizes match
    target = work / "flipped-blocks"
    hf_clm("prepare", *prepare_args(files, target))
    arrow = next((target / "train").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4] = (1_000_000).to_bytes(4, "little")
    arrow.write_bytes(bytes(data))
    result = hf_clm("train", *recipe_args(files, work / "flipped-run", *FLAGS, "--prepared_dataset", str(target)))
    results.append(("flipped bytes in a prepared Arrow file", one_line(result) and "flipped-blocks" in result.stderr,
                    result.stderr.strip().splitlines()[-1][:120] if result.stderr.strip() else ""))
    # file modes under two umasks (safetensors writes 0600, mkdtemp 0700)
    for umask in (0o022, 0o002):
        out = work / f"umask-{umask:03o}"
        hf_clm("train", *recipe_args(files, out / "run", *FLAGS, "--max_steps", "10"), preexec_fn=lambda m=umask: os.umask(m))
        hf_clm("merge", str(lora), "--output", str(out / "merged"), preexec_fn=lambda m=umask: os.umask(m))
        hf_clm("prepare", *prepare_args(files, out / "blocks"), preexec_fn=lambda m=umask: os.umask(m))
        wrong = [str(p) for p in out.rglob("*") if stat.S_IMODE(p.stat().st_mode) !=
                 ((0o777 if p.is_dir() else 0o666) & ~umask)]
        results.append((f"file modes under umask {umask:03o}", not wrong and any(out.rglob("*.safetensors")),
                        f"{len(wrong)} wrong" + (f", e.g. {wrong[0]}" if wrong else "")))
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]))
