"""``python -m bench --gpu`` (``make gpu-check``): what each speed switch does on this machine's GPU.

GPT-2 124M shapes (12 layers x 768, 12 heads, vocabulary 50,257, block 1,024) train in bf16 for a
few hundred steps once per switch: the baseline (SDPA attention, plain AdamW), then torch_compile,
fused AdamW, Liger kernels (when ``liger-kernel`` is installed), FSDP2 on one GPU, DeepSpeed ZeRO-2
on one GPU (when ``deepspeed`` is installed) and gradient checkpointing, each in a fresh process.
Every row gives tokens/s, MFU and peak GPU memory. A correctness row trains the same few steps from the same weights on the GPU (bf16) and on the CPU
(fp32) and compares the losses. On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
GPT2_124M = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
BLOCK = GPT2_124M["n_positions"]
# bf16 keeps 8 significant bits; over a few steps the mean loss moves by well under 1% of itself.
LOSS_TOLERANCE = 0.01

SWITCHES = {
    "baseline (bf16, SDPA, AdamW)": {"bf16": True, "optim": "adamw_torch"},
    "+ torch_compile": {"bf16": True, "optim": "adamw_torch", "torch_compile": True},
    "+ fused AdamW": {"bf16": True, "optim": "adamw_torch_fused"},
    "+ use_liger_kernel": {"bf16": True, "optim": "adamw_torch", "use_liger_kernel": True},
    "+ FSDP2 (1 GPU)": {"bf16": True, "optim": "adamw_torch", "fsdp_one_gpu": True},
    "+ DeepSpeed ZeRO-2 (1 GPU)": {"bf16": True, "optim": "adamw_torch", "deepspeed_one_gpu": True},
    "+ gradient_checkpointing": {"bf16": True, "optim": "adamw_torch", "gradient_checkpointing": True},
}


def no_gpu_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of torch to run the "
                f"GPU check")
    return "no CUDA GPU is visible (torch.cuda.is_available() is False; check CUDA_VISIBLE_DEVICES and the driver)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_on_one_gpu_environment() -> dict[str, str]:
    """What ``accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1`` gives its
    one process: a process group of one and accelerate's FSDP2 settings."""
    return {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "GPT2Block", "FSDP_RESHARD_AFTER_FORWARD": "true",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
            "FSDP_SYNC_MODULE_STATES": "true", "FSDP_OFFLOAD_PARAMS": "false", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def deepspeed_on_one_gpu_environment() -> dict[str, str]:
    """What ``accelerate launch --config_file recipes/accelerate/deepspeed-zero2.yaml --num_processes 1``
    gives its one process, built by accelerate's own launcher code, plus a process group of one."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    config = REPO / "recipes" / "accelerate" / "deepspeed-zero2.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes", "1",
                                               "-m", "hf_clm", "train"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    launched = prepare_deepspeed_cmd_env(args)[1]
    return {**{k: v for k, v in launched.items() if k.startswith("ACCELERATE_")}, "RANK": "0", "LOCAL_RANK": "0",
            "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def measure(switch: str, steps: int, warmup: int, batch: int, device: str) -> dict:
    """One row, in this process: tokens/s, MFU, peak memory and the losses of a Trainer run."""
    from transformers import GPT2Config

    from bench.training import random_blocks, trainer_measure
    from hf_clm.recipe.schema import RunArguments
    from hf_clm.training.throughput import device_peak_flops

    switches = dict(SWITCHES[switch]) if switch in SWITCHES else {}
    if switches.pop("fsdp_one_gpu", False):
        os.environ.update(fsdp_on_one_gpu_environment())
    if switches.pop("deepspeed_one_gpu", False):
        os.environ.update(deepspeed_on_one_gpu_environment())
    if device == "cpu":
        switches = {"use_cpu": True, "logging_steps": 1, "optim": "adamw_torch"}  # fp32
    else:
        switches.update(use_cpu=False)
        torch.cuda.reset_peak_memory_stats()
    cfg = GPT2Config(**GPT2_124M, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    blocks = random_blocks(batch * (steps + warmup), BLOCK)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        result = trainer_measure(cfg, blocks, batch, steps, warmup, out, **switches)
    if device == "cuda":
        peak = device_peak_flops(RunArguments(), torch.device("cuda"))
        rate = result["tokens_per_second"]
        result.update(peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30, device=torch.cuda.get_device_name(),
                      mfu=rate * result["flops_per_token"] / peak if peak and rate else None)
    return result


def run_row(switch: str, steps: int, warmup: int, batch: int, device: str = "cuda", timeout: int = 600) -> dict:
    """One row in a fresh process (compile caches, memory peaks and process groups do not leak)."""
    command = [sys.executable, "-m", "bench.gpu", "--row", switch, "--steps", str(steps), "--warmup", str(warmup),
               "--batch", str(batch), "--device", device]
    try:
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def switch_available(switch: str) -> str | None:
    if "use_liger_kernel" in SWITCHES[switch] and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not installed (pip install liger-kernel)"
    if "deepspeed_one_gpu" in SWITCHES[switch] and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed not installed (pip install -e '.[deepspeed]')"
    return None


def format_table(rows: list[dict]) -> str:
    lines = ["| switch | tokens/s | vs baseline | MFU | peak GPU memory | note |", "|---|---:|---:|---:|---:|---|"]
    base = next((r["tokens_per_second"] for r in rows if r.get("tokens_per_second")), None)
    for r in rows:
        rate = r.get("tokens_per_second")
        mfu, memory = r.get("mfu"), r.get("peak_memory_gib")
        cells = [r["switch"], f"{rate:,.0f}" if rate else "–", f"{rate / base:.2f}×" if rate and base else "–",
                 f"{mfu:.1%}" if mfu else "–", f"{memory:.1f} GiB" if memory else "–", r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def correctness_row(steps: int, batch: int) -> dict:
    """The same steps from the same weights and blocks: bf16 on the GPU against fp32 on the CPU."""
    gpu = run_row("baseline (bf16, SDPA, AdamW)", steps, 0, batch, "cuda-losses")
    cpu = run_row("cpu", steps, 0, batch, "cpu", timeout=1200)
    if "error" in gpu or "error" in cpu:
        return {"switch": "correctness: GPU bf16 vs CPU fp32 loss", "met": False,
                "note": f"not run: {gpu.get('error') or cpu.get('error')}"}
    gaps = [abs(g - c) / c for g, c in zip(gpu["losses"], cpu["losses"])]
    met = len(gaps) == steps and max(gaps) <= LOSS_TOLERANCE
    return {"switch": "correctness: GPU bf16 vs CPU fp32 loss", "met": met, "gpu_losses": gpu["losses"],
            "cpu_losses": cpu["losses"],
            "note": f"{'within' if met else '**outside**'} {LOSS_TOLERANCE:.0%}: largest gap {max(gaps):.2%} over "
                    f"{steps} steps (GPU {', '.join(f'{x:.3f}' for x in gpu['losses'])}; "
                    f"CPU {', '.join(f'{x:.3f}' for x in cpu['losses'])})"}


def main(steps: int = 300, warmup: int = 20, batch: int = 8, output: str | None = None) -> int:
    reason = no_gpu_reason()
    if reason:
        print(f"GPU check: not run: {reason}.")
        return 0
    started = time.perf_counter()
    print(f"GPU check on {torch.cuda.get_device_name()}: GPT-2 124M shapes, block {BLOCK}, batch {batch}, "
          f"{steps} steps after {warmup} warm-up steps per switch", flush=True)
    rows = []
    for switch in SWITCHES:
        unavailable = switch_available(switch)
        result = {"error": unavailable} if unavailable else run_row(switch, steps, warmup, batch)
        row = {"switch": switch, **{k: v for k, v in result.items() if k != "losses"}}
        if "error" in result:
            row["note"] = f"unavailable: {result['error']}"
        rows.append(row)
        print(f"  {switch}: {row.get('tokens_per_second') or row.get('note')}", flush=True)
    rows.append(correctness_row(steps=3, batch=2))
    print(format_table(rows))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if output:
        Path(output).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2) + "\n")
        print(f"written to {output}")
    return 0 if rows[-1]["met"] else 1


def worker() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description="one row of the GPU check")
    parser.add_argument("--row", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--device", choices=("cuda", "cuda-losses", "cpu"), required=True)
    args = parser.parse_args()
    device = "cpu" if args.device == "cpu" else "cuda"
    switch = args.row
    if args.device == "cuda-losses":  # the correctness run: every step's loss logged
        SWITCHES[switch] = {**SWITCHES[switch], "logging_steps": 1}
    result = measure(switch, args.steps, args.warmup, args.batch, device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker())
