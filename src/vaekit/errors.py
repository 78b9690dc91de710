"""The one exception type users see: the CLI prints its message and exits non-zero."""


class VaekitError(Exception):
    """A problem with the user's input or environment, explained in one message."""

    exit_code = 2


class Interrupted(VaekitError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; the message says how
    to resume. Exits with the shell's convention for a signal, 128 + its number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class WriteError(VaekitError):
    """A file could not be written (full disk, no permission); what was there is unchanged."""


class RunInUse(VaekitError):
    """Another process is writing the run directory (it holds the run's lock)."""
