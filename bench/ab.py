"""A/B of the training switches on a recipe: the recipe with every switch off (baseline), each
switch alone, and the best combination (the switches that beat the baseline alone), scored in bits
per character of the held-out text (tokenizer-independent: every byte is scored).

At equal wall time (the default): the baseline runs the recipe's own steps and sets the budget W,
wall time from process start to saved run. Each variant first runs a short calibration (its
seconds per step once warm, and its fixed cost: imports, tokenizer, data, compilation, evaluation,
save), then trains for the steps that fit in W — with the full LR schedule over those steps, as a
recipe with that max_steps would. At equal steps (``--ab_steps N``) every variant trains N steps:
quality per step, not per second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import run_checked

REPO = Path(__file__).resolve().parent.parent

# Each switch as recipe flags; the baseline turns every one off, whatever the recipe says.
SWITCHES: dict[str, list[str]] = {
    "document attention": ["--attention_scope", "document"],
    "muon": ["--optim", "muon"],
    "warmup-stable-decay": ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs",
                            '{"decay_ratio": 0.2}'],
    "bf16 autocast": ["--bf16", "true"],
    "torch_compile": ["--torch_compile", "true"],
}
BASELINE = ["--attention_scope", "block", "--optim", "adamw_torch_fused", "--lr_scheduler_type", "cosine",
            "--lr_scheduler_kwargs", "{}", "--bf16", "false", "--torch_compile", "false"]
# Switches that change speed only (the same arithmetic): left out of an equal-steps A/B.
SPEED_ONLY = ("torch_compile",)
CALIBRATION_STEPS = 60


@dataclass
class Recipe:
    """A recipe to A/B: its flags, how to score a run, and whether each run starts cold."""

    name: str
    path: str
    flags: list[str]
    score_args: list[str]
    cold_cache: bool
    steps: int = 0  # the recipe's max_steps, or for a recipe with a time budget the steps AB_STEPS gives


# The steps of a recipe that sets max_train_seconds instead: what its budget held on 2 CPU cores
# (AMD EPYC) when the switches were chosen; the A/B compares variants by steps and wall time.
AB_STEPS = {"shakespeare-baby": 900, "default": 1400}


def recipe_steps(name: str, values: dict) -> int:
    return int(values["max_steps"]) if values.get("max_steps") else AB_STEPS[name]


def baby_recipe(folder: Path, shakespeare: Path) -> Recipe:
    """shakespeare-baby on nanoGPT's split (first 90% of the characters / last 10%), cut into
    speeches as the recipe does (one document per speech, so document attention has boundaries to
    keep; EOS, scored, stands for the blank line between speeches), cold cache: tokenizer training
    is part of the wall time."""
    import yaml

    from bench.nanogpt import split_text

    train, val = split_text(shakespeare, folder)
    values = yaml.safe_load((REPO / "recipes" / "shakespeare-baby.yaml").read_text())
    values.update(train_files=[str(train)], validation_files=[str(val)], sample_by="paragraph")
    recipe = folder / "shakespeare-baby-nanogpt-split.yaml"
    recipe.write_text("# hf-clm train " + str(recipe) + "\n" + yaml.safe_dump(values, sort_keys=False))
    return Recipe("shakespeare-baby", str(recipe), [], ["--recipe", str(recipe)], cold_cache=True,
                  steps=recipe_steps("shakespeare-baby", values))


def default_recipe() -> Recipe:
    """The embedded demo on its own held-out files, warm cache (tokenized once before timing)."""
    import yaml

    values = yaml.safe_load((REPO / "recipes" / "default.yaml").read_text())
    return Recipe("default", "recipes/default.yaml", [], ["--recipe", "recipes/default.yaml"], cold_cache=False,
                  steps=recipe_steps("default", values))


@dataclass
class Outcome:
    steps: int
    wall: float
    bits_per_char: float
    seconds_per_step: float | None = None


class Runner:
    def __init__(self, recipe: Recipe, folder: Path, quick_flags: list[str]):
        self.recipe, self.folder, self.quick_flags = recipe, folder, quick_flags
        self.warm_cache = tempfile.mkdtemp(prefix="ab-cache-", dir=folder)
        self.count = 0

    def env(self) -> dict[str, str]:
        cache = tempfile.mkdtemp(prefix="ab-cache-", dir=self.folder) if self.recipe.cold_cache else self.warm_cache
        return {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1"}

    def train(self, flags: list[str], steps: int) -> tuple[Path, float, dict[str, str]]:
        self.count += 1
        run_dir = self.folder / f"{self.recipe.name}-{self.count}"
        env = self.env()
        command = [sys.executable, "-m", "hf_clm", "train", self.recipe.path, *self.recipe.flags, *BASELINE,
                   *flags, *self.quick_flags, "--max_train_seconds", "none", "--max_steps", str(steps),
                   "--eval_strategy", "steps", "--eval_steps", str(steps),
                   "--save_strategy", "no", "--logging_steps", str(max(1, min(20, steps // 3))),
                   "--output_dir", str(run_dir), "--disable_tqdm", "true"]
        start = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        return run_dir, wall, env

    def score(self, run_dir: Path, env: dict[str, str]) -> float:
        out = run_checked([sys.executable, "-m", "hf_clm", "perplexity", str(run_dir), *self.recipe.score_args,
                              "--json"], env=env, cwd=REPO)
        return json.loads(out.stdout.strip().splitlines()[-1])["bits_per_char"]

    def run(self, flags: list[str], steps: int) -> Outcome:
        run_dir, wall, env = self.train(flags, steps)
        outcome = Outcome(steps, wall, self.score(run_dir, env))
        print(f"A/B {self.recipe.name} {' '.join(flags) or 'baseline'}: {outcome.bits_per_char:.4f} bits/char, "
              f"{steps} steps, {wall:.1f} s", file=sys.stderr, flush=True)
        return outcome

    def steps_in(self, flags: list[str], budget: float) -> tuple[int, float]:
        """Steps of this variant that fit in ``budget`` seconds of wall time, and its s/step."""
        run_dir, wall, _ = self.train(flags, CALIBRATION_STEPS)
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        rate = [e["interval_tokens_per_second"] for e in history if "interval_tokens_per_second" in e][-1]  # warm
        per_step = json.loads((run_dir / "perplexity.json").read_text())["train_tokens_seen"] / CALIBRATION_STEPS
        seconds_per_step = per_step / rate
        fixed = wall - CALIBRATION_STEPS * seconds_per_step
        return max(1, round((budget - fixed) / seconds_per_step)), seconds_per_step


def ab_outcomes(recipe: Recipe, folder: Path, steps: int | None,
                quick_flags: list[str]) -> tuple[Outcome, dict[str, Outcome]]:
    """The baseline's outcome, then each switch alone's and the best combination's by name
    ("+ muon", "best: muon + bf16 autocast"): at equal wall time, or at ``steps`` each when given."""
    runner = Runner(recipe, folder, quick_flags)
    equal_steps = steps is not None
    switches = {name: flags for name, flags in SWITCHES.items() if not (equal_steps and name in SPEED_ONLY)}
    if not recipe.cold_cache:
        runner.train([], 2)  # tokenize once: every timed run then reads the same cache
    baseline = runner.run([], steps or recipe.steps)
    outcomes = {}

    def measure(flags: list[str]) -> Outcome:
        if equal_steps:
            return runner.run(flags, steps)
        n, seconds_per_step = runner.steps_in(flags, baseline.wall)
        outcome = runner.run(flags, n)
        outcome.seconds_per_step = seconds_per_step
        return outcome

    for name, flags in switches.items():
        outcomes[f"+ {name}"] = measure(flags)
    winners = [name for name in switches if outcomes[f"+ {name}"].bits_per_char < baseline.bits_per_char]
    if len(winners) > 1:
        outcomes["best: " + " + ".join(winners)] = measure([f for name in winners for f in switches[name]])
    return baseline, outcomes
