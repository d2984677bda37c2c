"""The one exception type users see: a clear sentence naming the bad value and the fix."""

from __future__ import annotations


class LiteLVLMError(ValueError):
    """Bad input or a missing file. The CLI prints the message alone (no traceback) and exits with 2.

    `cli_message`: the same sentence in command-line terms (flags instead of keyword arguments), when the two
    differ; the CLI prints it instead of the message.
    """

    def __init__(self, message: str, *, cli_message: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli_message or message


def shown(value: object, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters, to quote a bad value inside a sentence."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
