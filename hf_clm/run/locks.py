"""Locks: one writer per folder (a run's output_dir, a prepared_dataset target).

The lock is a file created with ``O_EXCL`` in the folder, holding the holder's pid, host and
command. A second job gets one line naming the holder. A lock whose process is gone (same host,
pid not running, or running but started after the lock was taken: a reused pid) is stale and
is taken over, so a job killed with SIGKILL does not block its own restart. So is a lock taken by an
earlier start of the same Slurm job, on any host: Slurm requeues a job (preemption, ``scontrol
requeue``) only once every process of its earlier start has ended, and the requeued start may run
on other nodes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hf_clm.errors import HfClmError
from hf_clm.run.files import LOCK_FILENAME

logger = logging.getLogger(__name__)



def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), where /proc tells; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def slurm_start() -> dict:
    """The Slurm job and start (0, then one more per requeue) this process runs in; empty outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    return {"slurm_job": job, "slurm_start": int(restarts) if restarts.isdigit() else 0}


def earlier_start_of_this_job(holder: dict) -> bool:
    """The holder ran in an earlier start of the Slurm job this process runs in (since requeued)."""
    here = slurm_start()
    return bool(here) and holder.get("slurm_job") == here["slurm_job"] and \
        isinstance(holder.get("slurm_start"), int) and holder["slurm_start"] < here["slurm_start"]


def holder_is_gone(holder: dict) -> bool:
    if earlier_start_of_this_job(holder):
        return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or not is_running(pid):
        return True
    started = process_start_time(pid)
    # a pid reused by a process that started after the lock was written is not the holder
    return started is not None and started > float(holder.get("locked_at", 0)) + 1


def read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or torn by a crash


def describe(holder: dict) -> str:
    if not holder:
        return "an unknown process (unreadable lock)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("locked_at", 0)))
    job = f" in Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job} since {since} ({holder.get('command', '?')})"


def masked_secrets(argv: list[str]) -> list[str]:
    """The command line with the value of every ``*token*`` flag (any spelling: ``--hub_token X``,
    ``--hub-token=X``, ``--HUB_TOKEN``) replaced by ``***``: a lock file is readable by others."""
    masked, hide_next = [], False
    for arg in argv:
        name, has_value, _ = arg.partition("=")
        secret = arg.startswith("-") and "token" in name.lower().replace("-", "_")
        masked.append("***" if hide_next else f"{name}=***" if secret and has_value else arg)
        hide_next = secret and not has_value
    return masked


def try_create(path: Path) -> bool:
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    record = {"pid": os.getpid(), "host": socket.gethostname(), "locked_at": time.time(),
              "command": " ".join(["hf-clm", *masked_secrets(sys.argv[1:])]), **slurm_start()}
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(record, stream)
    return True


@contextmanager
def folder_lock(folder: str | Path, what: str, part: str | None = None):
    """Hold the lock of ``folder`` (created when missing; removed again on the way out when this
    job created it and left nothing in it), or of one ``part`` of it (a shard of a prepared
    folder: writers of different parts run side by side)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (LOCK_FILENAME if part is None else f"{LOCK_FILENAME}-{part}")
    while not try_create(path):
        holder = read_holder(path)
        if holder is None:
            continue  # released between the two calls
        if holder and not holder_is_gone(holder) or not holder and time.time() - path.stat().st_mtime < 10:
            raise HfClmError(f"{what} {folder} is in use by {describe(holder)}; wait for that job to finish, or "
                             f"if it is no longer running delete {path}")
        logger.warning("Taking over the stale lock of %s from %s", folder, describe(holder))
        path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        for path in created:  # only while empty: a job that failed before writing leaves nothing
            try:
                path.rmdir()
            except OSError:
                break
