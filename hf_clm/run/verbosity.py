"""Verbosity: what the libraries print around the package's own output.

Quiet by default: transformers' and datasets' log messages below errors (``loss_type=None ...``,
deprecation notes), Python's FutureWarning/DeprecationWarning and the libraries' UserWarnings, and
transformers' "Loading weights" bars say nothing a user of ``hf-clm`` can act on. The progress bars
that measure the user's own work stay: reading and tokenizing the corpus (datasets), training and
evaluation (Trainer). ``hf-clm --verbose`` (anywhere on the command line) shows everything. Under a
launcher, every process keeps this choice: the package's default ``log_level_replica: passive``
(``hf_clm.recipe.schema.PACKAGE_DEFAULTS``) stops Trainer from setting the other ranks to warnings.
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


# Environment variables through which a user sets the libraries' verbosity; set, they win.
VERBOSITY_VARIABLES = ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY")


def configure_logging(verbose: bool) -> None:
    """The package's INFO lines; the libraries' warnings filtered unless ``verbose``."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # under a launcher, the other ranks' INFO lines would repeat the main one's
    logging.getLogger("hf_clm").setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=LIBRARY_MODULES)


def quiet_libraries(verbose: bool) -> None:
    """Without ``verbose``: transformers' and datasets' log messages below errors (unless the user set
    their verbosity variables), and no "Loading weights" bars (transformers' own tqdm; Trainer's
    training bar is another)."""
    if verbose:
        return
    import datasets
    import transformers

    if not any(os.environ.get(name) for name in VERBOSITY_VARIABLES):
        transformers.utils.logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
