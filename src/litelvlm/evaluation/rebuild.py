"""Rebuilding a run's reports from its records alone (`litelvlm report`), without a model or the data set.

A plain run directory holds run.json and its records: the part files every process wrote ahead (parts/) or
the merged records.jsonl. Its results.json, results.md and budget_vs_ciou.png are recomputed from them,
byte-identical to what the run itself wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LiteLVLMError
from .loop import RUN_FILE, finish_records
from .records import part_files, read_parts
from .run_directory import read_config

RECORDS_FILE = "records.jsonl"
REMEDY = "finish the run with the same eval command first"


def read_records(directory: Path) -> list[dict]:
    """A run's records: the complete units of its part files if it has any, else its records.jsonl."""
    if part_files(directory):
        return read_parts(directory)
    path = directory / RECORDS_FILE
    if not path.is_file():
        raise LiteLVLMError(
            f"run {str(directory)!r} has no records ({RECORDS_FILE} or parts/records.rank*.jsonl); "
            "start it with the eval command."
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise LiteLVLMError(
                f"line {number} of {str(path)!r} is not JSON; restore the file or its parts/ folder."
            ) from None
    return records


def rebuild_run(directory: str | Path) -> dict:
    """Rewrite records.jsonl, results.json, results.md and budget_vs_ciou.png of a plain run from its records;
    returns the results payload."""
    directory = Path(directory)
    if not (directory / RUN_FILE).is_file():
        raise LiteLVLMError(f"{str(directory)!r} is not an evaluation run: it has no {RUN_FILE}.")
    config = read_config(directory, RUN_FILE, "run.json")
    missing = [name for name in ("methods", "budgets", "num_images", "protocol") if name not in config]
    if missing:
        raise LiteLVLMError(
            f"{str(directory / RUN_FILE)!r} lacks {', '.join(missing)}; it is not a run.json litelvlm wrote."
        )
    return finish_records(directory, read_records(directory), config, remedy=REMEDY)
