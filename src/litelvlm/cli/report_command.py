"""`litelvlm report`: rebuild a run's reports from its records alone (no model, no data set)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild a run's reports (and a preset's paper table) from its records",
        description="Recompute the reports of an eval run directory from its per-expression records "
        "(records.jsonl, or the parts/ files its processes wrote ahead): results.json, results.md and "
        "budget_vs_ciou.png; for a --preset run, those of every split and paper_table.md, paper_table.json and "
        "paper_budget_vs_ciou.png. The files are byte-identical to the ones the run wrote.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of `litelvlm eval`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import LiteLVLMError
    from ..evaluation.loop import RUN_FILE
    from ..evaluation.paper import PRESET_FILE, rebuild_preset
    from ..evaluation.paper_table import PLOT, TABLE_JSON, TABLE_MD
    from ..evaluation.rebuild import rebuild_run
    from .outputs import check_directory_writable

    directory = Path(args.run_dir)
    if directory.exists() and not directory.is_dir():
        raise LiteLVLMError(f"{args.run_dir!r} is a file; pass the run directory (the --out of an eval run).")
    if not directory.is_dir():
        raise LiteLVLMError(f"run directory {args.run_dir!r} does not exist; pass the --out of an eval run.")
    check_directory_writable(directory, "RUN_DIR", args.run_dir)  # the reports are rewritten in it
    if (directory / PRESET_FILE).is_file():
        table = rebuild_preset(directory)
        for key in table["splits"]:
            print(
                f"rebuilt {directory / key / 'results.json'} ({table['expressions'][key]} expressions per cell)"
            )
        print(f"wrote {directory / TABLE_MD}, {directory / TABLE_JSON}, {directory / PLOT}")
        return 0
    if not (directory / RUN_FILE).is_file():
        raise LiteLVLMError(
            f"{args.run_dir!r} is not an eval run directory: it has neither {RUN_FILE} nor {PRESET_FILE}."
        )
    payload = rebuild_run(directory)
    count = max((row["count"] for row in payload["results"]), default=0)
    files = ", ".join(str(directory / name) for name in ("results.json", "results.md", "budget_vs_ciou.png"))
    print(f"rebuilt from {count} expressions per cell: {files}")
    return 0
