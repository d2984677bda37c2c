"""`litelvlm` command line: select | segment | eval | report | analyze | bench | demo.

Bad input ends in one sentence on stderr and exit code 2, never a traceback; warnings are one line each.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import LiteLVLMError
from ..memory import keep_freed_memory_for_reuse
from . import (
    analyze_command,
    bench_command,
    demo_command,
    eval_command,
    report_command,
    segment_command,
    select_command,
)

COMMANDS = (select_command, segment_command, eval_command, report_command, analyze_command, bench_command,
            demo_command)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litelvlm",
        description="Training-free, text-guided visual-token pruning for pixel-grounding VLMs.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"litelvlm: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    warnings.showwarning = _one_line_warning
    _quiet_transformers()
    if os.environ.get("LITELVLM_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory_for_reuse()  # CPU: no page faults for every large tensor (see litelvlm.memory)
    try:
        return args.run(args) or 0
    except LiteLVLMError as error:
        print(f"litelvlm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"litelvlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `litelvlm select ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _quiet_transformers() -> None:
    """Loading-progress bars and advisory logs of transformers are noise in a CLI."""
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


if __name__ == "__main__":
    sys.exit(main())
