"""The one exception type users see: the CLI prints its message and exits non-zero."""


class VaekitError(Exception):
    """A problem with the user's input or environment, explained in one message."""
