"""Training tokens/s: a plain PyTorch loop (forward, backward, AdamW step) against hf_clm's Trainer
on the same model, batches and optimizer; then Trainer with each speed switch."""

from __future__ import annotations

import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, GPT2Config, TrainingArguments

from hf_clm.training.throughput import flops_per_token
from hf_clm.training.trainer import CausalLMTrainer

VOCAB = 4096


def config(n_layer: int, n_embd: int, block: int, attn: str = "sdpa") -> GPT2Config:
    return GPT2Config(vocab_size=VOCAB, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=4,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn)


def random_blocks(n: int, block: int) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    return Dataset.from_dict({"input_ids": torch.randint(0, VOCAB - 1, (n, block), generator=generator).tolist()})


def plain_loop(cfg: GPT2Config, blocks: Dataset, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.tensor(blocks["input_ids"])
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        ids = data[(step * batch) % len(data):][:batch]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch * cfg.n_positions / (time.perf_counter() - start)



def trainer_measure(cfg: GPT2Config, blocks: Dataset, batch: int, steps: int, warmup: int, out: str,
                    **switches) -> dict:
    """Trainer on ``blocks``: tokens/s over ``steps`` after ``warmup``, every step's loss, FLOPs per
    token (logged every ``logging_steps``). ``switches`` are TrainingArguments values (CPU unless
    ``use_cpu: false``)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                marks["start"] = time.perf_counter()
            if state.global_step == warmup + steps:
                marks["end"] = time.perf_counter()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    args = TrainingArguments(**{
        "output_dir": out, "max_steps": warmup + steps, "per_device_train_batch_size": batch,
        "learning_rate": 1e-3, "lr_scheduler_type": "constant", "save_strategy": "no", "eval_strategy": "no",
        "logging_steps": 10_000, "report_to": "none", "disable_tqdm": True, "dataloader_pin_memory": False,
        "include_num_input_tokens_seen": True, "use_cpu": True, "ddp_find_unused_parameters": False,
        **switches})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": VOCAB - 1}, "<pad>")),
                                        pad_token="<pad>", eos_token="<pad>")
    trainer = CausalLMTrainer(model=model, args=args, train_dataset=blocks, processing_class=tokenizer,
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              flops_per_token=flops_per_token(model, cfg.n_positions), peak_flops=None,
                              callbacks=[Clock()])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    timed = "start" in marks and "end" in marks  # not when there are no warm-up steps to start the clock after
    rate = steps * batch * cfg.n_positions / (marks["end"] - marks["start"]) if timed else None
    return {"tokens_per_second": rate, "losses": losses, "flops_per_token": trainer.meter.flops_per_token}


def trainer_run(cfg: GPT2Config, blocks: Dataset, batch: int, steps: int, warmup: int, out: str,
                **switches) -> float:
    return trainer_measure(cfg, blocks, batch, steps, warmup, out, **switches)["tokens_per_second"]
