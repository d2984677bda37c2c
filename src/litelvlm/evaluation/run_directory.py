"""A run directory's housekeeping: reading its JSON files, and one run at a time in it.

Two `eval` commands started into one `--out` would interleave their records and files silently; each process
therefore holds an exclusive lock on the directory (one lock file per process rank, so the processes of one
sharded run do not exclude each other) for the whole run.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LiteLVLMError
from ..io import remove_stale_temporaries

LOCK_PREFIX = ".lock.rank"


def read_config(directory: Path, name: str, what: str) -> dict:
    """The JSON configuration file `name` of a run directory, or one sentence saying what is wrong."""
    path = directory / name
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = f"{str(path)!r} is not valid JSON; it is not a {what} litelvlm wrote — delete it or"
    else:
        if isinstance(config, dict):
            return config
        problem = f"{str(path)!r} does not hold an object; it is not a {what} litelvlm wrote — delete it or"
    raise LiteLVLMError(f"{problem} use another run directory.", cli_message=f"{problem} pass another --out.")


@contextmanager
def run_lock(directory: Path, rank: int = 0) -> Iterator[None]:
    """Hold the run directory (created if needed) for this process rank; refuses at once if another run
    holds it. Temporary files an earlier, killed run left behind are removed under the lock."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{LOCK_PREFIX}{rank}"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            problem = (
                f"another litelvlm run is writing into {str(directory)!r} (it holds {path.name}); wait for it to "
                "finish, or"
            )
            raise LiteLVLMError(
                f"{problem} use another run directory.", cli_message=f"{problem} pass another --out."
            ) from None
        try:
            if rank == 0:
                remove_stale_temporaries(directory)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
