"""The exceptions users see: one message each, in the library's words (the CLI prints the
message, adds how to go on in its own words, and exits non-zero)."""

from __future__ import annotations

import signal
from pathlib import Path


class VaekitError(Exception):
    """A problem with the user's input or environment, explained in one message.
    ``resumable``: a run directory whose checkpoint the run can continue from once the
    problem is solved (``fit(..., out=run, resume=True)``; the CLI names its own command)."""

    exit_code = 2
    resumable: Path | None = None
    how_to_resume: str | None = None  # the app's words for continuing (default: fit's)

    def __str__(self) -> str:
        text = super().__str__()
        if self.resumable is None:
            return text
        how = self.how_to_resume or f"fit(..., out={str(self.resumable)!r}, resume=True)"
        return f"{text.rstrip()}{'' if text.rstrip().endswith('.') else '.'} Continue with: {how}"


class Interrupted(VaekitError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint (``holds``: where it
    is). Exits with the shell's convention for a signal, 128 + its number."""

    def __init__(self, signum: int, run: Path | None, holds: str):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; the checkpoint holds {holds}")
        self.signum, self.exit_code, self.resumable = signum, 128 + signum, run


class WriteError(VaekitError):
    """A file could not be written (full disk, no permission); what was there is unchanged."""


class RunInUse(VaekitError):
    """Another process is writing the run directory (it holds the run's lock)."""


class NotARunFolder(VaekitError):
    """A new run was to go into a folder that holds other things than a vaekit run, or is a file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


class RunExists(VaekitError):
    """A new run was to go where a run is, without leave to replace it."""

    def __init__(self, path: Path, files: list[str]):
        super().__init__(f"{path} already holds a run ({', '.join(files[:3])}); resume it, or replace it "
                         "(overwrite=True)")
        self.path, self.files = path, files


class NoCheckpoint(VaekitError):
    """A resume was asked of a run that has no checkpoint."""

    def __init__(self, path: Path, name: str):
        super().__init__(f"{path} has no {name} to resume from (the run stopped before its first "
                         "checkpoint, or checkpoints were turned off); start it again, replacing it")
        self.path = path
