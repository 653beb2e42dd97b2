"""`python -m mtl_lightning.report <sweep_dir>`: the study report of a sweep
(`mtl_lightning.study.report`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mtl_lightning.core.errors import one_line_errors
from mtl_lightning.study.report import REFERENCE, write_report


@one_line_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mtl_lightning.report <sweep_dir>`: a config mistake is one line, no trace."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_lightning.report",
        description="Write report.md, report.json and PNG plots comparing the runs of a sweep.",
    )
    parser.add_argument("sweep_dir", help="a multirun's sweep folder, e.g. logs/compare/<time>")
    parser.add_argument(
        "--reference",
        default=None,
        help=f"the scenario every other one is compared with, besides the single-task baselines "
        f"(default {REFERENCE}, where the sweep has it)",
    )
    args = parser.parse_args(argv)
    print(f"Wrote {write_report(args.sweep_dir, args.reference)}")


if __name__ == "__main__":
    main()
