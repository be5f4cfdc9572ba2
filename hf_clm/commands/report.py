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
    from hf_clm.run.locks import folder_lock

    if args.output:
        # a comparison written into a run directory would replace that run's own report
        check_output_folder(args.output, refuse_run=len(args.run_dirs) > 1)
    output = args.output or (args.run_dirs[0] if len(args.run_dirs) == 1 else "report")
    with folder_lock(output, "--output" if args.output else "report folder", part="report"):
        paths = write_report(args.run_dirs, output)
    for path in paths:
        print(path)
    return 0
