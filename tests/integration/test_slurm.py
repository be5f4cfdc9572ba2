"""recipes/slurm/train.sbatch under a real Slurm: the one-host cluster that ``.ci/slurm-up`` starts.

Every job is a real ``sbatch`` of the shipped script, with its ``srun`` step, its ``accelerate
launch`` per node and its own rank and address logic, training the debug recipe on CPU
(``GPUS_PER_NODE=0``: gloo) for a few seconds. The tests skip, saying why, where ``sbatch`` or
``sinfo`` is missing or no node is up. What stands in for a second machine is said in the
two-node test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GLOO_ABORT, ONE_THREAD, REPO, run_hf_clm, train_losses

pytestmark = pytest.mark.full  # Slurm jobs, seconds to a minute each

SCRIPT = REPO / "recipes" / "slurm" / "train.sbatch"
JOB_MINUTES = 10  # Slurm's time limit of every job here: nothing outlives a hung rendezvous for long
WAIT_SECONDS = 540  # and how long a test waits for one
# seconds-long trainings of the debug recipe: two validation documents, one evaluation at the end
SHORT = ("--max_eval_samples", "2", "--disable_tqdm", "true")


def cluster_problem() -> str | None:
    """Why no Slurm job can run here, or None."""
    missing = [tool for tool in ("sbatch", "sinfo", "squeue", "scontrol") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not found: no Slurm here (.ci/slurm-up installs and starts a one-host cluster)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Slurm cluster is not up: sinfo did not answer in 30 s (.ci/slurm-up starts it)"
    if result.returncode != 0:
        return f"the Slurm cluster is not up: sinfo: {result.stderr.strip()[:200]} (.ci/slurm-up starts it)"
    if not {"idle", "mix", "alloc"} & set(result.stdout.split()):
        return f"the Slurm cluster is not up: no node is idle (sinfo: {' '.join(result.stdout.split())})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """Skips the test that needs it, saying why, where no Slurm job can run here."""
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


def job_env(logs: Path, **variables: str) -> dict[str, str]:
    """The environment sbatch passes on to the job (``--export=ALL``): this one, with this
    interpreter's environment first on PATH (``accelerate``), the package importable from this
    checkout, CPU training, one thread per process and the per-node logs in ``logs``."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **ONE_THREAD, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": python_path, "GPUS_PER_NODE": "0", "LOG_DIR": str(logs),
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **variables}


def sbatch(logs: Path, sbatch_flags: list[str], train_flags: list[str], env: dict[str, str]) -> str:
    """Submit the script (from the project folder, as its header says) with the debug recipe: the job id."""
    command = ["sbatch", "--parsable", f"--time={JOB_MINUTES}", f"--output={logs}/%x-%j.out", *sbatch_flags,
               str(SCRIPT), "recipes/debug.yaml", *train_flags]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"sbatch: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def job_state(job: str) -> dict[str, str]:
    """scontrol's fields of the job (JobState, ExitCode, Restarts, ...); empty once Slurm forgot it."""
    result = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S+)", result.stdout)) if result.returncode == 0 else {}


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(every)
    return value


def wait_for_end(job: str) -> dict[str, str]:
    """The job's fields once it has ended (polled each second: ``sbatch --wait`` checks at 2, 8, 32,
    32, ... s); a job still running after WAIT_SECONDS is cancelled and the test fails."""
    try:
        return wait_for(lambda: (state := job_state(job)).get("JobState") in ENDED and state, f"end of job {job}",
                        every=1)
    except AssertionError:
        subprocess.run(["scancel", job], timeout=30)
        raise


def job_log(logs: Path, job: str) -> str:
    """The batch step's log and each node's, one after the other."""
    files = [logs / f"hf-clm-{job}.out", *sorted(logs.glob(f"slurm-hf-clm-{job}-node*.out"))]
    return "\n".join(f"==> {path.name}\n{path.read_text(errors='replace')}" for path in files if path.is_file())


def run_job(logs: Path, sbatch_flags: list[str], train_flags: list[str], env: dict[str, str],
            run_dir: Path) -> tuple[str, str]:
    """Submit, wait for the end and check it ended well: (job id, its logs). A job whose gloo worker
    aborted in C++ as it started (conftest's GLOO_ABORT) runs once more, from a clean run folder."""
    for attempt in (1, 2):
        job = sbatch(logs, sbatch_flags, train_flags, env)
        state, log = wait_for_end(job), job_log(logs, job)
        if state["ExitCode"] == "0:0" or GLOO_ABORT not in log or attempt == 2:
            break
        shutil.rmtree(run_dir, ignore_errors=True)
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    return job, log


def run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "perplexity.json").read_text())["run"]


def test_outside_slurm_the_script_says_what_is_missing_in_one_line():
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = subprocess.run(["bash", str(SCRIPT), "recipes/debug.yaml"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "SLURM_JOB_ID is not set: submit it with sbatch" in result.stderr


def test_one_node_two_cpu_processes(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    env = job_env(tmp_path, PROCESSES_PER_NODE="2")
    job, log = run_job(tmp_path, ["--nodes=1", "--cpus-per-task=2"],
                       ["--output_dir", str(run_dir), "--max_steps", "4", "--eval_steps", "4", "--save_steps", "4",
                        *SHORT], env, run_dir)
    assert (run_dir / "perplexity.json").is_file()
    record = run_record(run_dir)
    assert (record["processes"], record["machines"], record["backend"]) == (2, 1, "gloo")
    assert "node 0 of 1" in log and (tmp_path / f"slurm-hf-clm-{job}-node0.out").is_file()


# ---- two nodes on one host ---------------------------------------------------------------------

STEPS_2N = ("--max_steps", "6", "--eval_steps", "6", "--save_steps", "3", "--logging_steps", "1", *SHORT)

# Each of the job's two tasks (one host: Debian's slurmd is one node per host) is given the identity
# of its own node before the script's per-node lines run: the node id (its task rank), the job's
# node count and a node list naming this host twice, and a Hugging Face cache of its own, as a
# second machine would have (datasets' cache is not shared between machines).
NODE_IDENTITY = ('export SLURM_NODEID=$SLURM_PROCID SLURM_NNODES=2 SLURM_JOB_NODELIST={host},{host}\n'
                 'export HF_HOME={caches}/node$SLURM_PROCID HF_DATASETS_CACHE={caches}/node$SLURM_PROCID/datasets')


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-two-nodes")
    host = socket.gethostname().split(".")[0]
    env = job_env(root, PROCESSES_PER_NODE="1", NODE_SETUP=NODE_IDENTITY.format(host=host, caches=root / "caches"))
    job, log = run_job(root, ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2"],
                       ["--output_dir", str(root / "two-nodes"), "--per_device_train_batch_size", "8", *STEPS_2N], env,
                       root / "two-nodes")
    # the same global batch (16 blocks) in one plain process
    single = run_hf_clm("train", "recipes/debug.yaml", "--output_dir", root / "one-process",
                        "--per_device_train_batch_size", "16", *STEPS_2N, cwd=REPO, env=ONE_THREAD)
    assert single.returncode == 0, single.stderr[-3000:]
    return root, job, log


def test_two_nodes_train_as_one_process_with_the_same_global_batch(two_nodes):
    """Real: sbatch, the script's srun step with its two tasks, one accelerate launch (torchrun) per
    task, the script's own per-node logic (node rank from the escaped $SLURM_NODEID, node count, the
    first host of $SLURM_JOB_NODELIST as rendezvous address, c10d hosted by node 0), the c10d
    rendezvous and gloo collectives over this host's network stack, two training processes and a
    log per node. Standing in: the second node's identity. Both tasks run on this one host, and
    each is given SLURM_NODEID 0 or 1, SLURM_NNODES=2 and this host named twice as the node list
    (NODE_IDENTITY), with a cache folder of its own, before the script's per-node lines read them."""
    root, job, log = two_nodes
    two, one = train_losses(root / "two-nodes"), train_losses(root / "one-process")
    assert len(two) == len(one) == 6
    assert two[-1] == pytest.approx(one[-1], abs=1e-5)
    assert two == pytest.approx(one, abs=1e-4)  # the whole curve, as tests/test_distributed.py checks it
    assert one[-1] < one[0]
    for node in (0, 1):
        assert f"node {node} of 2 on " in (root / f"slurm-hf-clm-{job}-node{node}.out").read_text()
        assert any((root / "caches" / f"node{node}" / "datasets").iterdir())  # each node prepared its own


def test_the_run_record_of_two_nodes_says_two_machines(two_nodes):
    root, _, log = two_nodes
    record = run_record(root / "two-nodes")
    assert (record["processes"], record["machines"], record["backend"]) == (2, 2, "gloo")
    assert "2 processes on 2 machines" in (root / "two-nodes" / "report.md").read_text()
    assert "2 processes on 2 machines" in log


# ---- requeued after a checkpoint ---------------------------------------------------------------

MAX_STEPS_RQ = 300  # enough to be still training when a checkpoint has been seen, on a fast machine too
STEPS_RQ = ("--max_steps", str(MAX_STEPS_RQ), "--save_steps", "25", "--save_total_limit", "2",
            "--eval_steps", str(MAX_STEPS_RQ), "--logging_steps", "25", *SHORT)


@pytest.fixture(scope="module")
def requeued(slurm_cluster, tmp_path_factory):
    from hf_clm.training.checkpoints import newest_complete_checkpoint

    root = tmp_path_factory.mktemp("slurm-requeue")
    run_dir = root / "requeued"
    job = sbatch(root, ["--nodes=1"], ["--output_dir", str(run_dir), *STEPS_RQ], job_env(root))
    try:
        checkpoint = wait_for(lambda: run_dir.is_dir() and newest_complete_checkpoint(run_dir), "complete checkpoint")
        # what preemption does: the job is stopped and goes back to the queue (the script's --requeue)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        assert not (run_dir / "perplexity.json").exists(), "the job finished before the requeue; raise max_steps"
        wait_for(lambda: job_state(job).get("JobState") == "PENDING", "pending requeued job")
        # Slurm holds a requeued job back for about two minutes; start it now instead
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        state = wait_for_end(job)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    log = job_log(root, job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-4000:]
    whole = run_hf_clm("train", "recipes/debug.yaml", "--output_dir", root / "whole", *STEPS_RQ, cwd=REPO,
                       env=ONE_THREAD)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_from = re.search(r"Resuming from (\S+)", log)
    return run_dir, root / "whole", checkpoint, resumed_from and Path(resumed_from[1]), state, log


def step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def test_a_requeued_job_resumes_from_its_newest_checkpoint(requeued):
    run_dir, _, seen, resumed_from, state, log = requeued
    assert state["Restarts"] == "1"
    assert f"job {state['JobId']} (start 1)" in log and f"job {state['JobId']} (start 2)" in log
    # the newest complete checkpoint when the job was requeued: the one seen, or one saved just after
    assert resumed_from is not None and resumed_from.parent == run_dir, log[-4000:]
    assert step(seen) <= step(resumed_from) < MAX_STEPS_RQ
    assert (run_dir / "perplexity.json").is_file()


def test_a_requeued_job_ends_with_the_weights_of_an_uninterrupted_run(requeued):
    from safetensors.torch import load_file

    run_dir, whole, _, resumed_from, _, _ = requeued
    assert resumed_from is not None and step(resumed_from) < MAX_STEPS_RQ
    resumed, uninterrupted = load_file(run_dir / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    different = [name for name in resumed if not resumed[name].equal(uninterrupted[name])]
    assert not different, different
