"""Locks: one protocol per folder (a run's output_dir, a prepared_dataset target, a merge's or a
report's output folder).

Every writer of a folder holds ``fcntl.flock`` on the folder's one lock file, ``.hf_clm.lock``:

* exclusively (``LOCK_EX``) when its job replaces the folder's contents as a whole: a training, a
  whole ``prepare``, a merge into its output folder, a report into its output folder;
* shared (``LOCK_SH``) when it writes one part beside others: a shard of a prepared folder
  (``--shard I --num_shards N``), the tokenizer of a sharded preparation (``--tokenizer_only``).
  A part writer also holds its part's own lock file, ``.hf_clm.lock-PART``, exclusively, so two
  writers of one part meet there.

So a whole preparation cannot start while a shard is written (and remove it), a shard cannot
start while a whole preparation runs (and delete its ``prepared.json``), and two writers of one
part refuse each other. A job meeting a lock fails at once with one line naming the holder (each
holder writes its pid, host and command, secrets masked, into the file it holds exclusively). The
kernel releases a lock when its process ends, however it ends: a SIGKILL leaves a file behind but
no lock, and the next job takes it over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
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


def holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "locked_at": time.time(),
            "command": " ".join(["hf-clm", *masked_secrets(sys.argv[1:])]), **slurm_start()}


def locked_file(path: Path, mode: int) -> int | None:
    """An open descriptor of ``path`` holding ``flock(mode)``, or None when another process holds
    a conflicting lock. Retried when the file was removed or replaced between opening and locking."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)  # the file we locked was unlinked by its last holder: lock the new one


def write_record(handle: int, path: Path, folder: Path) -> None:
    """The holder's record, into the file this process holds exclusively (a stale one is named first)."""
    previous = read_holder(path)
    if previous and previous.get("pid") != os.getpid():
        logger.warning("Taking over the stale lock of %s from %s", folder, describe(previous))
    os.ftruncate(handle, 0)
    os.pwrite(handle, json.dumps(holder_record()).encode(), 0)


def live_holders(folder: Path) -> list[dict]:
    """The records in ``folder``'s lock files of processes still running (for the error line)."""
    holders = []
    for path in sorted(folder.glob(f"{LOCK_FILENAME}*")):
        holder = read_holder(path)
        if holder and not holder_is_gone(holder):
            holders.append(holder)
    return holders


def in_use_error(folder: Path, what: str, path: Path) -> HfClmError:
    holders = [read_holder(path) or {}] if path.name != LOCK_FILENAME else live_holders(folder)
    named = "; ".join(describe(holder) for holder in holders if holder) or "another process"
    return HfClmError(f"{what} {folder} is in use by {named}; wait for that job to finish (the lock is released "
                      f"when its process ends)")


def release(handle: int, path: Path, exclusive: bool) -> None:
    """Unlock and close; the lock file is removed by its last holder (when this one, holding it
    shared, can take it exclusively; a process that opened it meanwhile locks the new one)."""
    try:
        if exclusive or _try_upgrade(handle):
            path.unlink(missing_ok=True)
    finally:
        os.close(handle)


def _try_upgrade(handle: int) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def folder_lock(folder: str | Path, what: str, part: str | None = None):
    """Hold ``folder``'s lock (created when missing; the folder is removed again on the way out
    when this job created it and left nothing in it): exclusively, or, for a writer of one
    ``part`` (a shard, the shared tokenizer), shared with the other parts' writers and with the
    part's own lock held exclusively."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    main_path = folder / LOCK_FILENAME
    paths = [(main_path, part is None)] + ([(folder / f"{LOCK_FILENAME}-{part}", True)] if part else [])
    try:
        with ExitStack() as held:
            for path, exclusive in paths:
                handle = locked_file(path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                if handle is None:
                    raise in_use_error(folder, what, path)
                held.callback(release, handle, path, exclusive)
                if exclusive:
                    write_record(handle, path, folder)
            yield paths[-1][0]
    finally:
        for path in created:  # only while empty: a job that failed before writing leaves nothing
            try:
                path.rmdir()
            except OSError:
                break
