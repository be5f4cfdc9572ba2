"""Benchmarks of hf_clm's stages against their limits and the conventional way: ``python -m bench``."""

import subprocess


def run_checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, when the command fails, says why: the end of its stderr."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command[:8]))} ... exited {result.returncode}:\n"
                           f"{result.stderr[-3000:]}")
    return result
