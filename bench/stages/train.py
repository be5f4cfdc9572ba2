"""Stage ``train``: training tokens/s on CPU, hf_clm's Trainer against a plain PyTorch loop (forward,
backward, AdamW step) on the same GPT-2 (4 layers x 256, block 128, batch 16), then Trainer with each
speed switch, and eager attention against SDPA (``bench/training.py``)."""

from __future__ import annotations

from pathlib import Path

from bench.rows import AtLeast, Row

BLOCK, BATCH = 128, 16
STAGE = "train CPU"


def rows(quick: bool, folder: Path) -> list[Row]:
    """Trainer (defaults) and each switch (fused AdamW, gradient checkpointing, bf16 autocast,
    torch_compile when not --quick) vs the plain loop; eager attention vs SDPA."""
    from bench.training import config, plain_loop, random_blocks, trainer_run

    steps, warmup = (4, 2) if quick else (40, 5)
    cfg = config(n_layer=4, n_embd=256, block=BLOCK)
    blocks = random_blocks(BATCH * (steps + warmup), BLOCK)
    plain = plain_loop(cfg, blocks, BATCH, steps, warmup)
    rows = []
    switches = {"Trainer (defaults)": {}, "+ adamw_torch_fused": {"optim": "adamw_torch_fused"},
                "+ gradient_checkpointing": {"gradient_checkpointing": True}, "+ bf16 autocast": {"bf16": True}}
    if not quick:
        switches["+ torch_compile"] = {"torch_compile": True}
    default_rate = None
    for name, flags in switches.items():
        try:
            rate = trainer_run(cfg, blocks, BATCH, steps, warmup, str(folder / "trainer"), **flags)
        except Exception as err:  # a switch this machine cannot use is reported, not fatal
            rows.append(Row(STAGE, name, None, None, f"unavailable: {type(err).__name__}"))
            continue
        if not flags:
            default_rate = rate
        rows.append(Row(STAGE, f"{name} vs plain PyTorch loop", rate / plain, None if flags else AtLeast(0.9),
                        f"{rate:,.0f} vs {plain:,.0f} tokens/s (GPT-2 4×256, block {BLOCK}, batch {BATCH})"))
    eager = trainer_run(config(4, 256, BLOCK, attn="eager"), blocks, BATCH, steps, warmup, str(folder / "eager"))
    rows.append(Row(STAGE, "eager attention vs SDPA (both Trainer)", eager / default_rate, None,
                    f"{eager:,.0f} tokens/s eager"))
    return rows
