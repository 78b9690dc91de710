"""Run by tests/test_distributed.py under torchrun: vaekit's CLI in every rank, with a record
of each filesystem access under $VAEKIT_AUDIT_WATCH (a run directory) written, when the
command ends, to $VAEKIT_AUDIT_LOG.<rank> (outside it), and the names of the threads still
running then to $VAEKIT_AUDIT_LOG.<rank>.threads.

Accesses are caught by an audit hook (``sys.addaudithook``: every ``open``, including
``os.open`` and ``tempfile``, and the ``os`` events for listing, creating, renaming,
removing and changing files) and, since ``os.stat`` raises no audit event, by a wrapper
around it (``Path.exists``, ``is_file`` and ``is_dir`` go through it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

WATCH = os.path.abspath(os.environ["VAEKIT_AUDIT_WATCH"])
EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate",
          "os.chmod", "os.chown", "os.utime", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile"}
seen: list[list[str]] = []


def inside(path) -> bool:
    if path is None or isinstance(path, int):
        return False
    try:
        full = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return False
    return full == WATCH or full.startswith(WATCH + os.sep)


def hook(event: str, args: tuple) -> None:
    if event in EVENTS:
        for path in args[:2]:
            if inside(path):
                seen.append([event, os.fsdecode(path)])


sys.addaudithook(hook)
_stat = os.stat


def stat(path, *args, **kwargs):
    if inside(path):
        seen.append(["os.stat", os.fsdecode(path)])
    return _stat(path, *args, **kwargs)


os.stat = stat

from vaekit.app.cli import main  # noqa: E402

code = main(sys.argv[1:])
with open(f"{os.environ['VAEKIT_AUDIT_LOG']}.{os.environ['RANK']}", "w") as f:
    json.dump(seen, f)
# The threads still running once the command is done: a process group that outlives it keeps
# gloo's, and they can abort the process during interpreter shutdown.
threads = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")]
Path(f"{os.environ['VAEKIT_AUDIT_LOG']}.{os.environ['RANK']}.threads").write_text(json.dumps(threads))
sys.exit(code)
