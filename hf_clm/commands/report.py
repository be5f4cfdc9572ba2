"""``hf-clm report RUN_DIR [RUN_DIR ...]``: report.md, report.json and learning curves of runs."""

from __future__ import annotations

import argparse

from hf_clm.commands.arguments import check_output_folder, command_parser
from hf_clm.run.verbosity import quiet_libraries

HELP = "write report.md, report.json and learning-curve PNGs for one run or a comparison of several"


def parser() -> argparse.ArgumentParser:
    p = command_parser("report", HELP)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    p.add_argument("--output", default=None,
                   help="where to write the report (default: the run directory itself for one run, "
                        "./report for several)")
    return p


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    quiet_libraries(verbose)
    from hf_clm.evaluation.report import write_report

    if args.output:
        check_output_folder(args.output)
    output = args.output or (args.run_dirs[0] if len(args.run_dirs) == 1 else "report")
    for path in write_report(args.run_dirs, output):
        print(path)
    return 0
