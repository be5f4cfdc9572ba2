"""``hf-clm explain MODEL "The cat sat on the mat"``: position by position, how a model scores a text."""

from __future__ import annotations

import argparse

from hf_clm.commands.arguments import add_model_argument, check_flag_ranges, command_parser
from hf_clm.recipe.ranges import at_least
from hf_clm.run.artifacts import json_text
from hf_clm.run.verbosity import quiet_libraries

HELP = "show, position by position, how a model scores a text: targets, probabilities, top-k, loss"
RANGES = {"top_k": at_least(1)}


def parser() -> argparse.ArgumentParser:
    p = command_parser("explain", HELP)
    add_model_argument(p)
    p.add_argument("text", help="the text to explain, e.g. \"The cat sat on the mat\"")
    p.add_argument("--top_k", type=int, default=5, help="predictions shown per position")
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    return p


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    check_flag_ranges(args, RANGES)
    quiet_libraries(verbose)
    from hf_clm.evaluation.explain import explain, format_explanation
    from hf_clm.model.build import device_description, load_for_inference

    model, tokenizer = load_for_inference(args.model_dir, args.device, args.dtype)
    explanation = explain(model, tokenizer, args.text, args.top_k)
    where = {"device": device_description(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
    print(json_text({**explanation.as_dict(), **where}, indent=None) if args.json else
          format_explanation(explanation) + f" ({where['device']}, {where['dtype']})")
    return 0
