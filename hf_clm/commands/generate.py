"""``hf-clm generate MODEL "prompt"``: a prompt continued by a trained model."""

from __future__ import annotations

import argparse
import math

from hf_clm.commands.arguments import add_model_argument, check_flag_ranges, command_parser
from hf_clm.errors import HfClmError
from hf_clm.recipe.ranges import SEED, Range, at_least, finite
from hf_clm.run.verbosity import quiet_libraries

HELP = "continue a prompt with a trained model"
# Below this, logits / temperature overflow float32 and sampling fails; 0 means greedy.
SMALLEST_TEMPERATURE = 1e-6
RANGES = {
    "seed": SEED, "max_new_tokens": at_least(1), "top_k": at_least(0),
    "temperature": Range(lambda v: finite(v) and v >= 0, "a finite number >= 0 (0 = greedy)"),
    "top_p": Range(lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
}


def parser() -> argparse.ArgumentParser:
    p = command_parser("generate", HELP)
    add_model_argument(p)
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top_k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 = off (default %(default)s)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed repeats the same text (default %(default)s)")
    p.add_argument("--ignore_eos", action="store_true",
                   help="do not stop at end-of-text: the model's EOS is never sampled, so the text runs to "
                        "--max_new_tokens (default: stop where the model ends the text, and say so)")
    return p


def check_temperature(temperature: float) -> None:
    if math.isfinite(temperature) and 0 < temperature < SMALLEST_TEMPERATURE:
        raise HfClmError(f"--temperature must be 0 (greedy) or at least {SMALLEST_TEMPERATURE:g}, not "
                         f"{temperature:g}: smaller ones overflow the scores")


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    check_flag_ranges(args, RANGES)
    check_temperature(args.temperature)
    quiet_libraries(verbose)
    from hf_clm.model.build import load_for_inference
    from hf_clm.model.generate import Sampling, generate

    model, tokenizer = load_for_inference(args.model_dir, args.device, args.dtype)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.ignore_eos)
    generate(model, tokenizer, args.prompt, sampling, stream=True)
    return 0
