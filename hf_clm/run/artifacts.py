"""Artifacts: the files a run writes, each complete or absent (written to a temporary name, then renamed).

The finished-run marker, ``perplexity.json``, is written last (after the model, the report and
the card) and records what it vouches for: the final step and a SHA-256 of each weights file, so
a folder whose weights changed after the marker (an interrupted extension) is not taken as finished.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_clm.errors import HfClmError, first_line
from hf_clm.run.files import PERPLEXITY_FILENAME
from hf_clm.run.locks import is_running, process_start_time

# Where the marker records the non-finite numbers it stores as null, and why.
NON_FINITE_KEY = "non_finite"
WEIGHTS_PATTERNS = ("*.safetensors",)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Have ``write(temporary)`` write a file, then rename it to ``path``, so readers see the old
    file or the whole new one, never a part (a full disk or a kill leaves the old one). Writers of
    one file side by side (two processes, two shells) each rename a whole file of their own: the
    file ends as the last rename's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, umask_file_mode())  # mkstemp's 0600 would survive the rename
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    remove_stale_temporaries(path)
    return path


def process_umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (0644 under umask 022)."""
    return 0o666 & ~process_umask()


def with_umask_modes(path: str | Path) -> Path:
    """Give ``path`` and everything below it the modes the umask gives new files and folders (0644
    and 0755 under umask 022). Libraries write some files their own way (safetensors' ``save_file``
    0600, ``tempfile.mkdtemp`` 0700): applied after each save, so every file a job writes is as
    readable as the user's umask says, whichever library wrote it."""
    path = Path(path)
    mask = process_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink() or not item.exists():
            continue
        wanted = (0o777 if item.is_dir() else 0o666) & ~mask
        try:
            if item.stat().st_mode & 0o777 != wanted:
                os.chmod(item, wanted)
        except OSError:  # another user's file in a shared folder: left as it is
            continue
    return path


def temporary_prefix(target: Path) -> str:
    """The start of the name of a temporary beside ``target``: ``.<target>.<host>.<pid>.``, so a
    later writer can tell whether the one that made it is still at work."""
    return f".{target.name}.{socket.gethostname()}.{os.getpid()}."


def writer_is_gone(temporary: Path, target: Path) -> bool:
    """Whether the process that made ``temporary`` (named by :func:`temporary_prefix`) has ended: on
    this host its pid is not running, or is a process started after the temporary was last written
    (a reused pid). A name without host and pid (an older writer's) counts as ended; a writer on
    another host cannot be seen from here and is left alone."""
    middle = temporary.name[len(target.name) + 2:].rsplit(".", 3)  # host (may hold dots), pid, random, suffix
    if len(middle) != 4 or not middle[1].isdigit():
        return True
    if middle[0] != socket.gethostname():
        return False
    pid = int(middle[1])
    if not is_running(pid):
        return True
    try:
        written = temporary.stat().st_mtime
    except OSError:  # renamed or removed meanwhile: not ours to remove
        return False
    started = process_start_time(pid)
    return started is not None and started > written + 1


def stale_temporaries(target: Path) -> list[Path]:
    """Temporaries beside ``target`` (files or folders) whose writer was killed before its rename."""
    return [p for p in target.parent.glob(f".{glob.escape(target.name)}.*")
            if p.suffix in (".tmp", ".old") and writer_is_gone(p, target)]


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files of ``path`` left by an earlier writer that was killed before its rename;
    never one a live writer holds."""
    for stale in stale_temporaries(path):
        if stale.suffix == ".tmp" and not stale.is_dir():
            stale.unlink(missing_ok=True)


def output_folder_problem(path: Path) -> str | None:
    """Why files cannot be written into the folder ``path`` (None when they can): it is a file, a
    broken link, below a file, or somewhere this process may not create files. Probed by creating
    (and removing) a temporary folder, so read-only and pseudo file systems are caught as well."""
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".hf_clm-probe-"))
    except OSError as err:
        return f"cannot be written to ({err.strerror or first_line(err)})"
    return None


def write_text_atomic(text: str, path: str | Path) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def finite_json(data: Any, reasons: dict[str, str] | None = None, where: str = "") -> Any:
    """``data`` with every non-finite float replaced by None; ``reasons`` gets ``key: "nan"/"inf"``."""
    if isinstance(data, float) and not math.isfinite(data):
        if reasons is not None:
            reasons[where or "value"] = "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
        return None
    if isinstance(data, dict):
        return {k: finite_json(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v, reasons, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


def json_text(data: Any, indent: int | None = 2) -> str:
    """Strict JSON (never ``NaN``/``Infinity``): non-finite numbers become null, and a mapping gets
    a ``non_finite`` entry saying which values were what."""
    reasons: dict[str, str] = {}
    clean = finite_json(data, reasons)
    if reasons and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = {key: f"{value} (not a number JSON can hold)" for key, value in reasons.items()}
    return json.dumps(clean, indent=indent, allow_nan=False) + ("\n" if indent else "")


def write_json(data: Any, path: str | Path) -> Path:
    return write_text_atomic(json_text(data), path)


def weights_files(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHTS_PATTERNS for p in run_dir.glob(pattern) if p.is_file())


def damaged_weights(folder: Path) -> tuple[Path, str] | None:
    """The first weights file of ``folder`` that is not whole (cut short by a full disk or a kill),
    with why; None when every one is (or the folder holds none)."""
    for path in weights_files(folder) if folder.is_dir() else []:
        if problem := safetensors_problem(path):
            return path, problem
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digests(run_dir: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in weights_files(run_dir)}


def write_finished_marker(summary: dict[str, Any], run_dir: str | Path, step: int) -> Path:
    """The last file of a run: its figures, the final step and the digests of its weights."""
    run_dir = Path(run_dir)
    return write_json({**summary, "global_step": step, "weights_sha256": weights_digests(run_dir)},
                      run_dir / PERPLEXITY_FILENAME)


def read_json(path: Path, what: str) -> Any:
    """A JSON file the package wrote; a clear error naming it when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
        raise HfClmError(f"{path} is unreadable or not valid JSON ({reason}); {what}") from None


def finished_marker_problem(run_dir: Path, check_weights: bool = True) -> str | None:
    """Why ``run_dir`` is not a finished run (None when it is): the marker missing, unreadable, or
    not matching the weights beside it."""
    marker = run_dir / PERPLEXITY_FILENAME
    if not marker.is_file():
        return f"{PERPLEXITY_FILENAME} missing"
    try:
        summary = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{PERPLEXITY_FILENAME} is unreadable or not valid JSON"
    if not isinstance(summary, dict) or "weights_sha256" not in summary:
        return f"{PERPLEXITY_FILENAME} does not record the run's weights (written by an interrupted or older run)"
    if check_weights:
        recorded, present = summary["weights_sha256"], weights_digests(run_dir)
        if recorded != present:
            changed = sorted(set(recorded) ^ set(present) | {k for k in recorded if present.get(k) != recorded[k]})
            return f"the weights ({', '.join(changed)}) differ from those {PERPLEXITY_FILENAME} was written for"
    return None


def disk_full_message(err: OSError) -> str | None:
    """One line for a write that failed because the disk (or a file size limit) is full."""
    if err.errno not in DISK_FULL_ERRNOS:
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return (f"no space left{where} ({os.strerror(err.errno)}); free some space and run the command again "
            f"(finished files are written whole or not at all, so a rerun sees no partial result)")


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be whole (None when its header parses and its size is
    exactly what the header promises): cheap, without reading the tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                return "shorter than a safetensors header"
            length = int.from_bytes(prefix, "little")
            if length > size - 8:
                return "its header runs past the end of the file (truncated)"
            header = json.loads(stream.read(length))
    except OSError as err:
        return err.strerror or str(err)
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid JSON (corrupted)"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"
            and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"{size:,} bytes where its header promises {expected:,} ({'truncated' if size < expected else 'extra data'})"
    return None


def zip_archive_problem(path: Path) -> str | None:
    """Why a ``torch.save`` file (a zip archive) cannot be whole: its directory, kept at the end,
    is missing (truncated) or points past the end."""
    import zipfile

    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"member {info.filename} runs past the end of the file (truncated)"
    except OSError as err:
        return err.strerror or str(err)
    except zipfile.BadZipFile:
        return "not a complete torch.save archive (truncated or corrupted)"
    return None


def sharded_folder_problem(folder: Path) -> str | None:
    """Why a torch.distributed.checkpoint folder cannot be whole (None when it can): DCP writes each
    rank's ``__<rank>_<n>.distcp`` first and ``.metadata`` last (renamed into place), so a save cut
    short lacks ``.metadata``; a data file shorter than the byte ranges ``.metadata`` records for it
    was cut short (a full disk, a kill while the file system flushed)."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / DCP_METADATA).is_file():
        return f"no {DCP_METADATA} (torch.distributed.checkpoint writes it last)"
    try:
        storage = FileSystemReader(folder).read_metadata().storage_data
        ends: dict[str, int] = {}
        for item in storage.values():
            ends[item.relative_path] = max(ends.get(item.relative_path, 0), item.offset + item.length)
    except OSError as err:
        return err.strerror or str(err)
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError):
        return f"{DCP_METADATA} is not readable checkpoint metadata (truncated or corrupted)"
    for name, end in sorted(ends.items()):
        if not (folder / name).is_file():
            return f"{name} missing"
        if (size := (folder / name).stat().st_size) < end:
            return f"{name}: {size:,} bytes where {DCP_METADATA} records {end:,} (truncated)"
    return None


DCP_METADATA = ".metadata"
