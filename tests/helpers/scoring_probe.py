"""``hf-clm perplexity`` with a record of the windows each process scored, for tests launched under
torchrun or ``accelerate launch``.

Usage: python scoring_probe.py RECORD_DIR [perplexity flags...]

Writes RECORD_DIR/rank<N>.json: ``windows``, the number of window rows this process ran through
the model (every call of the scoring core, whatever its batch).
"""

import json
import os
import sys
from pathlib import Path

import hf_clm.evaluation.scoring as scoring
from hf_clm.commands.cli import main

record_dir, flags = Path(sys.argv[1]), sys.argv[2:]
scored = []


def counted_score_rows(model, input_ids, *args, **kwargs):
    scored.append(len(input_ids))
    return original_score_rows(model, input_ids, *args, **kwargs)


original_score_rows, scoring.score_rows = scoring.score_rows, counted_score_rows
code = main(["perplexity", *flags])
record_dir.mkdir(parents=True, exist_ok=True)
(record_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"windows": sum(scored)}))
sys.exit(code)
