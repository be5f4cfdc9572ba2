"""Verbosity: what the libraries print around the package's own output.

Quiet by default: transformers' and datasets' log messages below errors (``loss_type=None ...``,
deprecation notes), Python's FutureWarning/DeprecationWarning and the libraries' UserWarnings, and
transformers' "Loading weights" bars say nothing a user of ``hf-clm`` can act on. The progress bars
that measure the user's own work stay: reading and tokenizing the corpus (datasets), training and
evaluation (Trainer). ``hf-clm --verbose`` (anywhere on the command line) shows everything.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_FLAG = "--verbose"
LIBRARY_MODULES = r"(torch|transformers|accelerate|datasets|peft|huggingface_hub|evaluate|tokenizers)(\.|$)"


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """The arguments without ``--verbose``, and whether it was there."""
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def configure_logging(verbose: bool) -> None:
    """Before the libraries are imported: the package's INFO lines, and the libraries quiet unless ``verbose``
    (a TRANSFORMERS_VERBOSITY or DATASETS_VERBOSITY the user set wins)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hf_clm").setLevel(logging.INFO)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=LIBRARY_MODULES)


def quiet_progress_bars(verbose: bool) -> None:
    """Without ``verbose``: no "Loading weights" bars (transformers' own tqdm; Trainer's bars are not it)."""
    if not verbose:
        import transformers

        transformers.utils.logging.disable_progress_bar()
