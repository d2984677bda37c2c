"""The bad-input harness shared by the tests/test_bad_input_*.py suites.

A case runs a CLI command in-process (or a Python API call) and checks the contract for bad input: a non-zero
exit code (the Python API: `LiteLVLMError`), exactly one error line that names the bad value and the fix, no
traceback, and files written before left byte-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from litelvlm.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `litelvlm ARGV` run in this process."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse's own refusals (and --help)
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """stderr without warnings and progress bars: what the user is told went wrong."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip()
        and not line.startswith("litelvlm: warning:")
        and "\r" not in line
        and "it/s" not in line
    ]


def assert_one_sentence(code: int, stderr: str, *names: str, exit_code: int = 2) -> str:
    """The CLI's bad-input contract; returns the error line. `names`: substrings it must hold (the bad value,
    the fix), compared case-insensitively."""
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert code == exit_code, (code, stderr)
    line = lines[0]
    assert line.startswith("litelvlm"), line
    for name in names:
        assert name.lower() in line.lower(), f"{name!r} not in {line!r}"
    return line


def snapshot(directory: str | Path) -> dict[str, str]:
    """{relative path: sha1} of every file under `directory` (to show nothing was overwritten or added)."""
    directory = Path(directory)
    return {
        str(path.relative_to(directory)): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
