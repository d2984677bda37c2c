"""`litelvlm` command line: select | segment | answer | eval | report | analyze | bench | demo.

Bad input ends in one sentence on stderr and exit code 2, never a traceback; warnings are one line each.
Nothing heavy is imported at module level, so Ctrl-C during start-up (torch's import) is also one line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

COMMAND_MODULES = ("select", "segment", "answer", "eval", "report", "analyze", "bench", "demo")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with one-line refusals (no usage block) that say how to find the right usage."""

    def error(self, message: str):
        print(f"{self.prog}: error: {_with_fix(message)}; see `{self.prog} --help`.", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already says it (or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default == []
            or default == argparse.SUPPRESS
            or callable(default)
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


def _with_fix(message: str) -> str:
    """argparse's sentences, with the fix where argparse gives none."""
    conflict = re.fullmatch(r"argument (\S+): not allowed with argument (\S+)", message)
    if conflict:
        return f"{conflict[2]} and {conflict[1]} cannot be combined; pass only one of them"
    invalid = re.fullmatch(r"argument (\S+): invalid (int|float) value: (.*)", message)
    if invalid:
        kind = "a whole number" if invalid[2] == "int" else "a number"
        return f"argument {invalid[1]}: {invalid[3]} is not {kind}; pass {kind}"
    return message.rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(
        prog="litelvlm",
        description="Training-free, text-guided visual-token pruning for pixel-grounding VLMs.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}_command", __name__).add_parser(subparsers)
    for subparser in subparsers.choices.values():
        subparser.formatter_class = HelpFormatter
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"litelvlm: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from ..errors import LiteLVLMError  # light; the commands below import torch

        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("litelvlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    args.argv = argv
    warnings.showwarning = _one_line_warning
    _quiet_transformers()
    if os.environ.get("LITELVLM_KEEP_FREED_MEMORY", "1") != "0":
        from ..memory import keep_freed_memory_for_reuse

        keep_freed_memory_for_reuse()  # CPU: no page faults for every large tensor (see litelvlm.memory)
    try:
        return args.run(args) or 0
    except LiteLVLMError as error:
        print(f"litelvlm {args.command}: error: {error.cli_message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"litelvlm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
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
