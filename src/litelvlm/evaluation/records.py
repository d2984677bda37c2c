"""Write-ahead per-expression records, safe against being killed at any moment.

Every process appends to its own part file. The records of one unit of work (an image x method x budget) are
written with a single `write` + `fsync`, each line carrying the unit's key and size. A run killed mid-write
leaves at most one incomplete unit at the end of a part file; it is cut off when the run resumes and the unit is
computed again. Readers only ever see complete units, so no expression is lost or counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..io import TEMPORARY_SUFFIX, write_atomic

PARTS = "parts"


class RecordLog:
    def __init__(self, directory: str | Path, rank: int = 0) -> None:
        self.directory = Path(directory)
        self.parts = self.directory / PARTS
        self.parts.mkdir(parents=True, exist_ok=True)
        self.path = self.parts / f"records.rank{rank}.jsonl"
        for stale in self.parts.glob(f".{self.path.name}.*{TEMPORARY_SUFFIX}"):  # a repair killed mid-write
            stale.unlink(missing_ok=True)
        self._repair()

    def _repair(self) -> None:
        """Drop a trailing partial line and an incomplete last unit from this process's own part file."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete = list(_complete_units(data))
        kept = b"".join(raw for _, raw in complete)
        if kept != data:
            write_atomic(self.path, kept)

    def completed_units(self) -> set[str]:
        """Keys of every unit any process has completed."""
        return {unit for path in self._part_files() for unit, _ in _complete_units(path.read_bytes())}

    def append_unit(self, unit: str, records: list[dict]) -> None:
        lines = [json.dumps({**record, "unit": unit, "unit_size": len(records)}) + "\n" for record in records]
        with open(self.path, "ab") as file:
            file.write("".join(lines).encode())
            file.flush()
            os.fsync(file.fileno())

    def all_records(self) -> list[dict]:
        """Records of all complete units of all part files (a unit found twice is taken once)."""
        return read_parts(self.directory)

    def _part_files(self) -> list[Path]:
        return part_files(self.directory)


def part_files(directory: str | Path) -> list[Path]:
    """Every process's part file in a run directory (none if it has no parts/ folder)."""
    return sorted((Path(directory) / PARTS).glob("records.rank*.jsonl"))


def read_parts(directory: str | Path) -> list[dict]:
    """Records of all complete units of all part files of a run, read without changing any file (a unit found
    twice is taken once)."""
    seen: set[str] = set()
    records: list[dict] = []
    for path in part_files(directory):
        for unit, raw in _complete_units(path.read_bytes()):
            if unit in seen:
                continue
            seen.add(unit)
            records += [json.loads(line) for line in raw.decode().splitlines()]
    return records


def _complete_units(data: bytes) -> Iterable[tuple[str, bytes]]:
    """(unit, raw lines) of each complete unit, in file order."""
    end = data.rfind(b"\n") + 1  # anything after the last newline is a partial line
    lines = data[:end].splitlines(keepends=True)
    position = 0
    while position < len(lines):
        try:
            first = json.loads(lines[position])
            unit, size = first["unit"], first["unit_size"]
        except (json.JSONDecodeError, KeyError):
            position += 1
            continue
        group = lines[position : position + size]
        if len(group) == size and all(json.loads(line).get("unit") == unit for line in group):
            yield unit, b"".join(group)
        position += max(1, len(group))
