"""The one exception type users see: a clear sentence naming the bad value and the fix."""


class LiteLVLMError(ValueError):
    """Bad input or a missing file. The CLI prints the message alone (no traceback) and exits with 2."""
