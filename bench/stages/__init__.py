"""The stages of ``python -m bench``, one module each: ``rows(quick, folder, ...)`` measures the stage
and returns its rows of the table (:class:`bench.rows.Row`); ``quick`` runs tiny sizes (a smoke
test), ``folder`` is the run's scratch folder. The measurements themselves (worker processes,
training and scoring loops) live in the modules of ``bench/`` that each stage names."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
TOKENIZER = SHARED / "tiny-gpt2"  # the real GPT-2 tokenizer (the weights are not used here)
