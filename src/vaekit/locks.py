"""Advisory file locks (``flock``), shared by run directories and downloads: the kernel
releases them when a process dies, so a killed process never leaves a stale lock."""

from __future__ import annotations

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def try_lock(fd: int) -> str:
    """Lock ``fd`` without waiting: "locked", "busy" (another process holds it) or
    "unsupported" (no locks: Windows, or a file system without them)."""
    if fcntl is None:
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy"
    except OSError:
        return "unsupported"
    return "locked"
