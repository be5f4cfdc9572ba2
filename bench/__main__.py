"""``python -m bench``: every stage against its limit and the conventional way, one table + JSON.

Ratios are measured side by side in one run and are what the targets are about; absolute
seconds and tokens/s are printed for context. ``--quick`` runs tiny sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
TOKENIZER = SHARED / "tiny-gpt2"  # the real GPT-2 tokenizer (the weights are not used here)
DEFAULT_OUTPUT = "bench/results.json"


def repeated_corpus(megabytes: float, folder: Path) -> Path:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    target = int(megabytes * 1_000_000)
    path = folder / f"shakespeare-{megabytes:g}mb.txt"
    path.write_text((text * (target // len(text.encode()) + 1))[:target], encoding="utf-8")
    return path


def prepare_in_fresh_process(method: str, corpus: Path, block: int) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="bench-cache-"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "bench.data_prep", method, str(corpus), str(TOKENIZER), str(block)],
                         env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_rows(sizes: list[float], folder: Path) -> list[dict]:
    rows, package_rss = [], {}
    for size in sizes:
        corpus = repeated_corpus(size, folder)
        result = {m: prepare_in_fresh_process(m, corpus, 1024) for m in ("limit", "conventional", "package")}
        package_rss[size] = result["package"]["peak_rss_mb"]
        mb = result["package"]["text_bytes"] / 1e6
        rows.append({"stage": f"prepare {mb:.0f} MB", "what": "package vs tokenizer batch encode (limit)",
                     "ratio": result["limit"]["seconds"] / result["package"]["seconds"], "target": "≥ 0.77 (within 1.3×)",
                     "met": result["package"]["seconds"] <= 1.3 * result["limit"]["seconds"],
                     "context": f"{result['package']['seconds']:.1f} s vs {result['limit']['seconds']:.1f} s"})
        rows.append({"stage": f"prepare {mb:.0f} MB", "what": "package vs datasets.map + group_texts",
                     "ratio": result["conventional"]["seconds"] / result["package"]["seconds"], "target": "≥ 2",
                     "met": result["conventional"]["seconds"] >= 2 * result["package"]["seconds"],
                     "context": f"{result['conventional']['seconds']:.1f} s; blocks {result['package']['blocks']:,} "
                                f"vs {result['conventional']['blocks']:,} (run_clm drops each batch's tail)"})
    if len(sizes) > 1:
        small, large = package_rss[sizes[0]], package_rss[sizes[-1]]
        rows.append({"stage": "prepare memory", "what": f"peak RSS {sizes[-1]:g} MB / {sizes[0]:g} MB of text",
                     "ratio": large / small, "target": "≤ 1.5", "met": large <= 1.5 * small,
                     "context": f"{large:.0f} MB vs {small:.0f} MB"})
    return rows


def timed_process(command: list[str], env: dict[str, str]) -> float:
    """Seconds from process start to exit."""
    start = time.perf_counter()
    run_checked(command, env=env, cwd=REPO)
    return time.perf_counter() - start


def prepare_process_row(quick: bool, folder: Path) -> dict:
    """``hf-clm prepare`` vs the run_clm.py way, each a whole process from start to exit with a cold
    cache: Tiny Shakespeare x 50 (55.8 MB), one document per line, the GPT-2 tokenizer, block 512,
    2 workers, 5% held out."""
    from bench.prepare_scale import BLOCK, WORKERS, cold_env, prepare_command, repeated

    corpus = repeated(SHAKESPEARE, 2 if quick else 50, folder)
    package = timed_process(prepare_command(corpus, TOKENIZER, folder / "prepared-vs-run-clm"), cold_env(folder))
    conventional = timed_process([sys.executable, "-m", "bench.run_clm_way", str(corpus), str(TOKENIZER), BLOCK,
                                  WORKERS], cold_env(folder))
    mb = corpus.stat().st_size / 1e6
    return {"stage": f"prepare {mb:.1f} MB, whole process", "what": "hf-clm prepare vs run_clm.py's data steps",
            "ratio": conventional / package, "target": "≥ 2", "met": conventional >= 2 * package,
            "context": f"{package:.1f} s vs {conventional:.1f} s, start to exit, cold cache, block {BLOCK}, "
                       f"{WORKERS} workers"}


def training_rows(quick: bool, folder: Path) -> list[dict]:
    from bench.training import config, plain_loop, random_blocks, trainer_run

    steps, warmup = (4, 2) if quick else (40, 5)
    block, batch = 128, 16
    cfg = config(n_layer=4, n_embd=256, block=block)
    blocks = random_blocks(batch * (steps + warmup), block)
    plain = plain_loop(cfg, blocks, batch, steps, warmup)
    rows = []
    switches = {"Trainer (defaults)": {}, "+ adamw_torch_fused": {"optim": "adamw_torch_fused"},
                "+ gradient_checkpointing": {"gradient_checkpointing": True}, "+ bf16 autocast": {"bf16": True}}
    if not quick:
        switches["+ torch_compile"] = {"torch_compile": True}
    for name, flags in switches.items():
        try:
            rate = trainer_run(cfg, blocks, batch, steps, warmup, str(folder / "trainer"), **flags)
        except Exception as err:  # a switch this machine cannot use is reported, not fatal
            rows.append({"stage": "train CPU", "what": name, "ratio": None, "target": "", "met": None,
                         "context": f"unavailable: {type(err).__name__}"})
            continue
        is_default = not flags
        rows.append({"stage": "train CPU", "what": f"{name} vs plain PyTorch loop", "ratio": rate / plain,
                     "target": "≥ 0.9" if is_default else "", "met": rate >= 0.9 * plain if is_default else None,
                     "context": f"{rate:,.0f} vs {plain:,.0f} tokens/s (GPT-2 4×256, block {block}, batch {batch})"})
    eager = trainer_run(config(4, 256, block, attn="eager"), blocks, batch, steps, warmup, str(folder / "eager"))
    default = next(r for r in rows if r["what"].startswith("Trainer (defaults)"))
    rows.append({"stage": "train CPU", "what": "eager attention vs SDPA (both Trainer)", "ratio":
                 eager / (default["ratio"] * plain), "target": "", "met": None, "context": f"{eager:,.0f} tokens/s eager"})
    return rows


def evaluation_rows(quick: bool) -> list[dict]:
    from bench.evaluation import compare
    from bench.training import config

    rows = []
    n_tokens = 4096 if quick else 65_536
    cfg = config(n_layer=4, n_embd=256, block=256)
    for stride, name in ((256, "non-overlapping"), (128, "stride ½ window")):
        plain, package = compare(cfg, n_tokens, window=256, stride=stride, batch=16)
        rows.append({"stage": "evaluate", "what": f"{name} vs plain forward loop", "ratio": package / plain,
                     "target": "≥ 0.9", "met": package >= 0.9 * plain,
                     "context": f"{package:,.0f} vs {plain:,.0f} tokens/s"})
    return rows + [evaluation_memory_row(quick)]


def evaluation_memory_row(quick: bool) -> dict:
    """Peak resident memory of scoring one batch of GPT-2-124M shapes (window 1,024, batch 8), against
    the same process scoring a tiny model of the same vocabulary plus 2.5x the weights."""
    from bench.evaluation import memory

    sizes = {"window": 128, "batch": 2, "layers": 1} if quick else {"window": 1024, "batch": 8, "layers": 12}
    sliced, full = memory("sliced", **sizes), memory("full", **sizes)
    tiny = memory("sliced", **{**sizes, "layers": 0})
    bound = tiny["peak_mb"] + 2.5 * sliced["weights_mb"]
    return {"stage": "evaluate memory", "what": "peak RSS scoring GPT-2-124M shapes vs tiny-model process + 2.5× weights",
            "ratio": sliced["peak_mb"] / bound, "target": "≤ 1", "met": sliced["peak_mb"] <= bound,
            "context": f"{sliced['peak_mb']:,.0f} MB vs {bound:,.0f} MB ({tiny['peak_mb']:,.0f} + 2.5 × "
                       f"{sliced['weights_mb']:,.0f} MB of weights), window {sizes['window']}, batch {sizes['batch']}; "
                       f"added by one batch: head sliced {sliced['added_mb']:,.0f} MB, full float32 logits "
                       f"{full['added_mb']:,.0f} MB"}


def ab_section(args: argparse.Namespace, folder: Path) -> list[dict]:
    from bench.ab import ab_rows, baby_target, default_target

    rows = []
    for name in args.ab_recipes:
        target = baby_target(folder, SHAKESPEARE) if name == "baby" else default_target()
        quick = QUICK_AB_FLAGS[name] if args.quick else []
        steps = args.ab_steps if args.ab_steps is not None else (30 if args.quick else None)
        rows += ab_rows(target, folder, steps, quick)
    return rows


# --quick: models and corpora small enough to check the A/B runs, in seconds per variant.
QUICK_AB_FLAGS = {
    "baby": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--vocab_size", "300", "--warmup_steps", "5"],
    "default": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--vocab_size", "300", "--warmup_steps", "5",
                "--max_train_samples", "30", "--max_eval_samples", "5"],
}


def format_table(rows: list[dict]) -> str:
    lines = ["| stage | comparison | ratio | target | met | context |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['stage']} | {r['what']} | {ratio} | {r['target']} | {met} | {r['context']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, measures nothing")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="where to write the table as JSON")
    parser.add_argument("--only", nargs="+",
                        choices=("data", "train", "ddp", "checkpoint", "eval", "processes", "nanogpt", "ab"),
                        default=["data", "train", "ddp", "checkpoint", "eval", "processes"],
                        help="stages to run; 'ab' (the training switches' A/B, about an hour) only when named")
    parser.add_argument("--nanogpt", type=Path, default=None, metavar="CHECKOUT",
                        help="a checkout of github.com/karpathy/nanoGPT: --only nanogpt runs its CPU baby GPT beside "
                             "shakespeare-baby with the same wall time")
    parser.add_argument("--ab_recipes", nargs="+", choices=("baby", "default"), default=["baby", "default"],
                        help="recipes of the A/B: shakespeare-baby (nanoGPT's split) and the default demo")
    parser.add_argument("--ab_steps", type=int, default=None,
                        help="A/B at equal steps (quality per step) instead of equal wall time")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU check instead (make gpu-check): GPT-2 124M shapes in bf16 per speed switch, "
                             "tokens/s, MFU, peak memory and a GPU-vs-CPU loss row; says so and exits 0 without a GPU")
    parser.add_argument("--gpu-steps", type=int, default=300, help="timed steps per switch in the GPU check")
    args = parser.parse_args()
    if args.gpu:
        from bench.gpu import main as gpu_check

        return gpu_check(steps=args.gpu_steps, output=None if args.output == DEFAULT_OUTPUT else args.output)
    if not SHAKESPEARE.is_file():
        print(f"bench: error: the public data is not at {SHARED}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        if "data" in args.only:
            rows += data_rows([0.2, 1] if args.quick else [5, 50], folder)
            rows.append(prepare_process_row(args.quick, folder))
            from bench.prepare_scale import scale_rows, shards_row

            rows += scale_rows(SHAKESPEARE, TOKENIZER, folder, args.quick)
            rows.append(shards_row(SHAKESPEARE, TOKENIZER, folder, args.quick))
        if "train" in args.only:
            rows += training_rows(args.quick, folder)
        if "ddp" in args.only:
            from bench.ddp import ddp_rows

            rows += ddp_rows(args.quick, repeated_corpus(0.2 if args.quick else 1, folder), folder)
        if "checkpoint" in args.only:
            from bench.checkpoint_save import checkpoint_rows

            rows += checkpoint_rows(args.quick, repeated_corpus(0.2 if args.quick else 1, folder), TOKENIZER, folder)
        if "eval" in args.only:
            rows += evaluation_rows(args.quick)
        if "processes" in args.only:
            from bench.processes import processes_rows

            rows += processes_rows(args.quick, repeated_corpus(0.05 if args.quick else 1, folder), TOKENIZER, folder)
        if "nanogpt" in args.only:
            if args.nanogpt is None:
                parser.error("--only nanogpt needs --nanogpt CHECKOUT (git clone https://github.com/karpathy/nanoGPT)")
            from bench.nanogpt import nanogpt_row

            rows.append(nanogpt_row(args.nanogpt, SHAKESPEARE, folder))
        if "ab" in args.only:
            rows += ab_section(args, folder)
    machine = {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(format_table(rows))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
