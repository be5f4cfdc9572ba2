"""``hf-clm train`` with a record of what each process did, for tests launched under torchrun
or ``accelerate launch``.

Usage: python training_probe.py RECORD_DIR [train flags...]

Writes RECORD_DIR/rank<N>.json: every training forward pass's blocks (as lists of token ids), a
SHA-256 of the final weights (gathered whole when sharded), and each parameter as this rank held
it after the first optimizer step (DTensor or not, global and local shape, placements), and the
learning rate of each optimizer step, so a test can compare ranks with each other and with a
one-process run.

PROBE_HOLD_BACK_SECONDS=S holds rank 1 back for S seconds before its training clock starts, so
its clock reads S seconds less than rank 0's throughout (as a rank that was slower to set up).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

import hf_clm.training.train as train
from hf_clm.commands.cli import main
from hf_clm.training.throughput import ThroughputMeter

record_dir, flags = Path(sys.argv[1]), sys.argv[2:]
built, batches, held, rates = [], [], {}, []
rank = int(os.environ.get("RANK", "0"))


def record_training_batch(module, args, kwargs):
    if module.training:
        batches.append(kwargs["input_ids"].tolist())


def recorded_build_model(*args, **kwargs):
    model = original_build_model(*args, **kwargs)
    model.register_forward_pre_hook(record_training_batch, with_kwargs=True)
    built.append(model)
    return model


def as_held(parameter) -> dict:
    if isinstance(parameter, DTensor):
        return {"dtensor": True, "global": list(parameter.shape), "local": list(parameter.to_local().shape),
                "placements": [str(p) for p in parameter.placements]}
    return {"dtensor": False, "global": list(parameter.shape), "local": list(parameter.shape), "placements": []}


class RecordParameters(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1 or not held:
            held.update({name: as_held(p) for name, p in model.named_parameters()})


class RecordLearningRates(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])


def recorded_build_trainer(*args, **kwargs):
    trainer = original_build_trainer(*args, **kwargs)
    trainer.add_callback(RecordParameters())
    trainer.add_callback(RecordLearningRates())
    return trainer


def held_back_clock_start(meter, *args, **kwargs):
    time.sleep(float(os.environ["PROBE_HOLD_BACK_SECONDS"]))
    return original_clock_start(meter, *args, **kwargs)


if rank == 1 and os.environ.get("PROBE_HOLD_BACK_SECONDS"):
    original_clock_start = ThroughputMeter.on_train_begin
    ThroughputMeter.on_train_begin = held_back_clock_start


original_build_model, original_build_trainer = train.build_model, train.build_trainer
train.build_model, train.build_trainer = recorded_build_model, recorded_build_trainer
code = main(["train", *flags])
digest = hashlib.sha256()
for name, tensor in sorted(built[0].state_dict().items()):
    tensor = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # a collective: every rank, same order
    digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
record_dir.mkdir(parents=True, exist_ok=True)
(record_dir / f"rank{rank}.json").write_text(json.dumps({"batches": batches, "weights": digest.hexdigest(),
                                                         "parameters": held, "learning_rates": rates}))
sys.exit(code)
