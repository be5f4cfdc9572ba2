"""``python -m bench``: every stage against its limit and the conventional way, one table + JSON.

Ratios are measured side by side in one run and are what the targets are about; absolute
seconds and tokens/s are printed for context. ``--quick`` runs tiny sizes (a smoke test).
Each stage is a module of ``bench/stages`` whose ``rows(quick, folder, ...)`` returns its rows
(``bench/rows.py``); docs/bench.md describes them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from bench.rows import Row
from bench.stages import SHAKESPEARE, SHARED

DEFAULT_OUTPUT = "bench/results.json"


def no_options(args: argparse.Namespace) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    """A stage of the bench: its name for ``--only``, its module in ``bench/stages``, whether it runs
    when ``--only`` is not given, and the keyword arguments its ``rows`` takes from the command line."""

    name: str
    module_name: str
    by_default: bool = True
    options: Callable[[argparse.Namespace], dict] = field(default=no_options)

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"bench.stages.{self.module_name}")

    def rows(self, args: argparse.Namespace, folder: Path) -> list[Row]:
        return self.module.rows(args.quick, folder, **self.options(args))


STAGES = (
    Stage("data", "data"),
    Stage("train", "train"),
    Stage("ddp", "ddp"),
    Stage("checkpoint", "checkpoint"),
    Stage("eval", "evaluate"),
    Stage("processes", "processes"),
    Stage("nanogpt", "nanogpt", by_default=False, options=lambda args: {"checkout": args.nanogpt}),
    Stage("ab", "ab", by_default=False, options=lambda args: {"recipes": args.ab_recipes, "steps": args.ab_steps}),
)


def flowing(text: str, indent: str) -> str:
    """A docstring as wrapped plain text: ``literal`` spans shown as 'literal'."""
    return textwrap.fill(" ".join(text.split()).replace("``", "'"), width=100, initial_indent=indent,
                         subsequent_indent=indent)


def stages_help() -> str:
    """Every stage's module docstring (what it compares) and its rows' docstring (which rows)."""
    parts = ["stages (--only NAME ...; by default: "
             + " ".join(stage.name for stage in STAGES if stage.by_default) + "):"]
    for stage in STAGES:
        parts += ["", f"  {stage.name} (bench/stages/{stage.module_name}.py)",
                  flowing(stage.module.__doc__, "    "), flowing("Rows: " + stage.module.rows.__doc__, "    ")]
    return "\n".join(parts)


def format_table(rows: list[Row]) -> str:
    lines = ["| stage | comparison | ratio | target | met | context |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}×"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.stage} | {r.what} | {ratio} | {r.target_text} | {met} | {r.context} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     epilog=stages_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, measures nothing")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="where to write the table as JSON")
    parser.add_argument("--only", nargs="+", choices=[stage.name for stage in STAGES],
                        default=[stage.name for stage in STAGES if stage.by_default],
                        help="stages to run (listed below); 'nanogpt' and 'ab' (the training switches' A/B, about "
                             "an hour) only when named")
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
    return parser


def machine() -> dict:
    import torch

    return {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main() -> int:
    command_line = parser()
    args = command_line.parse_args()
    if args.gpu:
        from bench.gpu import main as gpu_check

        return gpu_check(steps=args.gpu_steps, output=None if args.output == DEFAULT_OUTPUT else args.output)
    if "nanogpt" in args.only and args.nanogpt is None:
        command_line.error("--only nanogpt needs --nanogpt CHECKOUT (git clone https://github.com/karpathy/nanoGPT)")
    if not SHAKESPEARE.is_file():
        print(f"bench: error: the public data is not at {SHARED}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for stage in STAGES:
            if stage.name in args.only:
                rows += stage.rows(args, Path(tmp))
    print(format_table(rows))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine(), "rows": [row.as_dict() for row in rows]},
                                            indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
