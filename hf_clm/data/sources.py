"""Hub sources: whether each Hub name a recipe reads (dataset, model, tokenizer) can be read.

Checked before any data work, in seconds: the libraries' own clients retry an unreachable Hub for
a minute, and offline (``HF_HUB_OFFLINE=1``) they read only the local cache.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx2
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session, validate_repo_id

from hf_clm.errors import HfClmError

# Seconds to wait for the Hub before saying it is unreachable (its clients retry for a minute).
HUB_PROBE_TIMEOUT = 4.0
# What huggingface_hub's HTTP client raises when the Hub cannot be reached.
NETWORK_ERRORS = (OSError, httpx2.TransportError, OfflineModeIsEnabled)
OFFLINE_HINT = "HF_HUB_OFFLINE=1 is set: only the local cache is read"


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hub endpoint answers at all (any HTTP status), within HUB_PROBE_TIMEOUT."""
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT)
    except NETWORK_ERRORS:
        return False
    return True


def is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def require_hub(key: str, name: str, alternative: str) -> None:
    """Fail in seconds, not after a minute of retries, when ``name`` (not a local path) must come from a
    Hub that cannot be reached. With HF_HUB_OFFLINE=1 the libraries read their cache and nothing is probed."""
    if is_local(name):
        return
    try:
        validate_repo_id(name)
    except HFValidationError:  # e.g. a path that does not exist: name the path, not the Hub's id rules
        raise HfClmError(f"{key} '{name}' does not exist (and is not a Hub id either); check the path") from None
    if constants.HF_HUB_OFFLINE or hub_reachable():
        return
    raise HfClmError(f"{key} '{name}' is not a local path and the Hugging Face Hub ({constants.ENDPOINT}) is "
                     f"unreachable; set HF_HUB_OFFLINE=1 to use a copy in the local cache, or {alternative}")


def offline_hint(alternative: str) -> str:
    return f" ({OFFLINE_HINT}; {alternative})" if constants.HF_HUB_OFFLINE else ""


def require_cached(key: str, name: str, filename: str, alternative: str) -> None:
    """Offline (HF_HUB_OFFLINE=1): a Hub name must be in the local cache; say so before any data work."""
    if is_local(name) or not constants.HF_HUB_OFFLINE:
        return
    if not isinstance(try_to_load_from_cache(name, filename), str):
        raise HfClmError(f"{key} '{name}' is not a local path and not in the local Hugging Face cache, and "
                         f"{OFFLINE_HINT}; unset HF_HUB_OFFLINE to download it, or {alternative}")


DATASET_ALTERNATIVE = "give local files with train_files"
TOKENIZER_ALTERNATIVE = "give a local tokenizer folder (tokenizer_name_or_path: PATH) or train_tokenizer: true"
MODEL_ALTERNATIVE = "give a local checkpoint folder (model_name_or_path: PATH)"


def check_hub_sources(model_args, data_args) -> None:
    """Before any data work: every Hub name the recipe reads can be read; every one that cannot is
    named in one error (not one per run)."""
    checks = []
    if data_args.dataset_name and not data_args.prepared_dataset:
        checks.append(lambda: require_hub("dataset_name", data_args.dataset_name, DATASET_ALTERNATIVE))
    for key, filename, alternative in (("model_name_or_path", "config.json", MODEL_ALTERNATIVE),
                                       ("tokenizer_name_or_path", "tokenizer_config.json", TOKENIZER_ALTERNATIVE)):
        if name := getattr(model_args, key):
            checks.append(lambda key=key, name=name, filename=filename, alternative=alternative: (
                require_hub(key, name, alternative), require_cached(key, name, filename, alternative)))
    problems = []
    for check in checks:
        try:
            check()
        except HfClmError as err:
            problems.append(str(err))
    if problems:
        raise HfClmError("; ".join(problems))
