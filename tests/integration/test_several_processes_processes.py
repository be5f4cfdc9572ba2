"""Commands under a launcher: those that run in one process are refused in one line, and a process
that cannot reach its launch's rendezvous says so in one line (perplexity and train share work out
across processes: tests/test_perplexity_processes.py, test_time_budget.py, test_distributed.py)."""

import socket
import sys

from conftest import ONE_THREAD, run_hf_clm, run_launch, subprocess_env


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once the probe closes: nothing listens there


def test_generate_launched_on_two_processes_is_refused_once_and_generates_nothing(finished_run):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hf_clm",
               "generate", str(finished_run.run_dir), "--prompt", "the cat", "--max_new_tokens", "5"]
    result = run_launch(command, env=subprocess_env(ONE_THREAD), timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("hf-clm: error: ")]
    expected = ("hf-clm: error: hf-clm generate runs in one process, and this launch started 2 (torchrun or "
                "accelerate launch): run 'hf-clm generate ...' without a launcher")
    assert errors == [expected]
    assert "the cat" not in result.stdout


def test_a_process_that_cannot_reach_the_rendezvous_says_where_and_how_long_in_one_line(finished_run):
    port = closed_port()
    worker = {**ONE_THREAD, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    result = run_hf_clm("perplexity", finished_run.run_dir, "--data", finished_run.files["validation"],
                        "--ddp_timeout", "3", env=worker, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hf-clm: error: this process (rank 1 of 2) could not reach the rendezvous at "
                           f"127.0.0.1:{port}: The client socket has timed out after 3000ms while trying to connect "
                           f"to (127.0.0.1, {port}); check that the first node (rank 0) is running")
    assert "Traceback" not in result.stderr
