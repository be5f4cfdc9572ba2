"""``hf-clm train`` with a record of what each process did, for tests launched under torchrun.

Usage: python training_probe.py RECORD_DIR [train flags...]

Writes RECORD_DIR/rank<N>.json: every training forward pass's blocks (as lists of token ids) and
a SHA-256 of the final weights, so a test can compare ranks with each other and with a
one-process run.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import hf_clm.train as train
from hf_clm.cli import main

record_dir, flags = Path(sys.argv[1]), sys.argv[2:]
built, batches = [], []


def record_training_batch(module, args, kwargs):
    if module.training:
        batches.append(kwargs["input_ids"].tolist())


def recorded_build_model(*args, **kwargs):
    model = original_build_model(*args, **kwargs)
    model.register_forward_pre_hook(record_training_batch, with_kwargs=True)
    built.append(model)
    return model


original_build_model = train.build_model
train.build_model = recorded_build_model
code = main(["train", *flags])
digest = hashlib.sha256()
for name, tensor in sorted(built[0].state_dict().items()):
    digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
record_dir.mkdir(parents=True, exist_ok=True)
(record_dir / f"rank{rank}.json").write_text(json.dumps({"batches": batches, "weights": digest.hexdigest()}))
sys.exit(code)
