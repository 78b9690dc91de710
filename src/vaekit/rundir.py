"""Run directories: the files a run writes, owned by one object (:class:`RunDirectory`),
read back with no code execution.

A run directory holds ``run.json`` (the run record: format version, data shape, how it was
trained), ``model.safetensors`` (weights), ``metrics.jsonl`` (one line per epoch),
``evaluation.json`` (and ``evaluation-SPLIT.json`` from ``vaekit evaluate``), the figures,
and while training ``checkpoint.safetensors`` (see :mod:`vaekit.checkpoint`) and
``best.safetensors`` (the weights of the best validation epoch). Runs started from a config
(the CLI) also hold ``config.json`` (the resolved settings) and ``data.json`` (how the data
were binarised or standardised); this module keeps them as plain JSON and leaves their
meaning to the app.

A folder is a run when its ``run.json`` is a vaekit run record (a format and a vaekit
version), nothing else. Every process that writes a run (training, resuming) holds an
exclusive lock on it (``flock`` on ``.vaekit-lock``, released by the kernel when the
process dies). A run that replaces another (``--overwrite``) is built in a hidden sibling
folder and swapped in as one step once it starts training, so a failure before that leaves
the old run as it was.

Nothing is pickled: weights go through safetensors and everything else is JSON checked
against a schema on the way in. Only regular files are read, each kind with a size cap.
Every file is written atomically, and the safetensors files vaekit writes carry a SHA-256
of their content in the header, so a damaged or edited file is refused instead of silently
used.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vaekit import __version__
from vaekit.errors import NotARunFolder, RunExists, VaekitError, WriteError
from vaekit.locks import try_lock

try:
    import fcntl
except ImportError:  # Windows: no flock; writers are not locked and stale files go by age
    fcntl = None

FORMAT = 1
CONFIG, INFO, WEIGHTS, METRICS, EVALUATION = (
    "config.json",
    "run.json",
    "model.safetensors",
    "metrics.jsonl",
    "evaluation.json",
)
CHECKPOINT, BEST = "checkpoint.safetensors", "best.safetensors"
DATA = "data.json"  # how the data were binarised/standardised (the app's data record)
LOCK = ".vaekit-lock"  # flock'ed by the process writing the run; holds its PID
# The files a run writes besides its figures.
RUN_FILES = (CONFIG, INFO, WEIGHTS, METRICS, EVALUATION, CHECKPOINT, BEST, DATA)
FIGURES = ("latent.png", "manifold.png", "reconstructions.png", "samples.png", "curves.png",
           "traversals.png", "interpolations.png")
LIKELIHOOD_CURVE = "likelihood_curve.png"
# The experiment trackers' logs (vaekit.trackers: --log tensorboard,mlflow) are the run's too:
# an --overwrite that kept them would mix the replaced run's curves and settings into the new one's.
TRACKER_LOGS = ("tensorboard", "mlruns")
# Everything of a run's that --overwrite drops (the rest of the folder is the user's and stays).
OWN_PATTERNS = (*RUN_FILES, *FIGURES, LIKELIHOOD_CURVE, "evaluation-*.json", "evaluation-*.partial.safetensors",
                LOCK, *TRACKER_LOGS)

# Size caps of what vaekit reads from a run directory (someone else's run may hold anything).
RECORD_BYTES = 1024**2  # config.json, run.json
DATA_RECORD_BYTES = 64 * 1024**2  # data.json: a standardisation has two numbers per feature
RESULT_BYTES = 16 * 1024**2  # evaluation*.json
METRICS_BYTES = 256 * 1024**2  # metrics.jsonl: a line per epoch
FIGURE_BYTES = 64 * 1024**2  # a PNG figure
HEADER_BYTES = 100_000_000  # a safetensors header (the format's own limit)

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
_STALE_AGE = 24 * 3600  # without file locks (Windows), temporary files older than this are stale


class RunDirectory:
    """The files of one run directory: their names, and reading and writing each of them.

    ``prepare`` readies the folder for a new run and takes the writer's lock: a new or empty
    folder is written in place; a run is replaced only with ``overwrite``, by a new run built
    in a hidden sibling folder that ``commit`` swaps in when training starts (``discard``
    drops it instead); any other folder is refused. ``lock`` takes the lock for a run that
    continues (resume); ``release`` gives it back. Every write is atomic. Readers check what
    they read (regular files, size caps, schemas) and never execute it.

    One object owns a run's lifecycle: whoever creates and prepares (or locks) it, the caller
    or :func:`vaekit.fit`, ends it, as a context manager (``with RunDirectory(p).prepare():``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root = self.path  # where files go now: the staging folder until an --overwrite commits
        self.prepared = False
        self.committed = True  # nothing staged
        self._in_place = False  # a new run written straight into the folder
        self._lock_fd: int | None = None
        self._staging_fd: int | None = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        """The owner's end of its run: a new run that failed before it started training is
        discarded (an old run it was to replace stays as it was); the lock is given back."""
        if kind is not None:
            self.discard()
        self.release()
        return False

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ what the folder is
    def is_run(self) -> bool:
        """Whether the folder holds a vaekit run: a ``run.json`` that is a run record (a
        format number and a vaekit version). Other files named like vaekit's do not count."""
        try:
            record = json.loads(read_regular(self.root / INFO, "the run record", RECORD_BYTES))
        except (OSError, VaekitError, ValueError, RecursionError):
            return False
        return (isinstance(record, dict) and isinstance(record.get("format"), int)
                and isinstance(record.get("vaekit_version"), str))

    def state(self) -> str:
        """``absent``, ``empty`` (nothing but vaekit's own lock and leftovers), ``run``,
        ``file`` (not a folder) or ``other`` (a folder holding something else)."""
        try:
            mode = os.stat(self.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "absent"  # (under a file: creating it says why not)
        except OSError as err:
            raise VaekitError(f"cannot look at {self.path}: {err.strerror or err}") from None
        if not stat.S_ISDIR(mode):
            return "file"
        if self.is_run():
            return "run"
        return "other" if self._foreign() else "empty"

    def _foreign(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.path))
        except OSError as err:
            raise VaekitError(f"cannot list {self.path}: {err.strerror or err}") from None
        return [n for n in names if n != LOCK and not _TEMPORARY.fullmatch(n)]

    def check_target(self, overwrite: bool = False) -> str:
        """Refuse what a new run may not be written into (see :meth:`prepare`); return
        :meth:`state`. Cheap: call it before loading data, and ``prepare`` checks again."""
        state = self.state()
        if state == "file":
            raise NotARunFolder(f"{self.path} exists and is not a directory", self.path)
        if state == "other":
            names = self._foreign()
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise NotARunFolder(
                f"{self.path}{_place(self.path)} is not empty and holds no vaekit run (it holds "
                f"{shown}); a new run goes into a new or empty folder, and overwriting replaces only "
                "a run", self.path)
        if state == "run" and not overwrite:
            raise RunExists(self.path, [name for name in RUN_FILES if (self.path / name).exists()])
        return state

    # ------------------------------------------------------------------ setting up
    def prepare(self, overwrite: bool = False) -> RunDirectory:
        """Ready the folder for a new run, holding its lock. A missing or empty folder gets
        the run in place; a run is replaced (``overwrite``) by one built in a hidden sibling
        folder, swapped in by :meth:`commit`; anything else is refused. The run record is
        written first, so a start cut short is still recognised as a run."""
        state = self.check_target(overwrite)
        if state == "absent":
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise VaekitError(f"cannot create {self.path}: {err.strerror or err}") from None
        check_writable(self.path)
        self.lock()
        self.prepared, self.committed = True, False
        try:
            if self.check_target(overwrite) == "run":  # again, now that no other writer can come in
                self._stage()
            else:
                self._in_place = True
            write_json(self.root / INFO, {"format": FORMAT, "vaekit_version": __version__})
        except BaseException:
            self.discard()
            self.release()
            raise
        return self

    def _stage(self) -> None:
        target = _real(self.path)
        here = _real(Path.cwd())
        if here == target or target in here.parents:
            raise VaekitError(
                f"cannot replace the run in {self.path} from inside it: vaekit swaps in the new run's "
                "folder as one step, which would leave this shell in the old one; run the command from "
                "outside it"
            )
        staging = target.parent / f".{target.name}.vaekit-new-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except OSError as err:
            raise WriteError(f"cannot create {staging} for the new run: {err.strerror or err}") from None
        self.root = staging
        self._staging_fd = _acquire(staging / LOCK, staging)

    def commit(self) -> None:
        """The new run starts: a staged run takes the old one's place in one step (the
        user's other files in the folder are carried over, the old run's files are not)."""
        if self.committed:
            return
        if self.root != self.path:
            target, staging = _real(self.path), self.root
            try:
                _carry_user_files(target, staging)
                _exchange(staging, target)
            except OSError as err:
                raise WriteError(f"could not swap the new run into {self.path}: {err.strerror or err}; "
                                 "the old run is unchanged") from None
            old, self._lock_fd, self._staging_fd = self._lock_fd, self._staging_fd, None
            self.root = self.path
            _carry_user_files(staging, target, move=True)  # anything added during the swap
            shutil.rmtree(staging, ignore_errors=True)  # the old run; what is left is removed later
            if old is not None:
                os.close(old)
        self.committed = True

    def discard(self) -> None:
        """Remove a new run that failed before it started (nothing left to mistake for a
        run); a replaced run is then untouched. A started run is never discarded."""
        if self.committed:
            return
        if self.root != self.path:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._staging_fd is not None:
                os.close(self._staging_fd)
            self.root, self._staging_fd = self.path, None
        elif self._in_place:
            for name in RUN_FILES:
                with contextlib.suppress(OSError):
                    (self.path / name).unlink(missing_ok=True)
            remove_temporary_files(self.path)
        self.prepared, self.committed, self._in_place = False, True, False

    def lock(self) -> RunDirectory:
        """Take the writer's lock (a second writer gets :class:`~vaekit.errors.RunInUse`
        naming the holder's PID), then clear what killed writers left behind."""
        if self._lock_fd is None:
            self.check_exists()
            self._lock_fd = _acquire(self.path / LOCK, self.path)
            _remove_stale_staging(self.path)
            remove_temporary_files(self.path)
        return self

    def release(self) -> None:
        """Give the lock back (and remove the lock file): another process may write now."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path / LOCK)):
                (self.path / LOCK).unlink()
        os.close(fd)

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def remove_temporary_files(self) -> None:
        """Remove what killed writers left in the run (temporary files nobody holds)."""
        remove_temporary_files(self.root)

    def check_exists(self) -> None:
        if self.path.is_dir():
            return
        if self.path.exists():
            raise VaekitError(f"{self.path} is a file, not a run directory")
        raise VaekitError(f"run directory not found: {self.path}")

    # ------------------------------------------------------------------ records
    def write_info(self, event_shape, **extra: Any) -> None:
        """``run.json``: the format, the vaekit version, the data's shape and ``extra``."""
        write_json(self.root / INFO, {"format": FORMAT, "vaekit_version": __version__,
                                      "event_shape": list(event_shape), **extra})

    def read_info(self) -> dict[str, Any]:
        return load_info(self.root)

    def has_config(self) -> bool:
        return os.path.lexists(self.root / CONFIG)  # a FIFO or link in its place is read, and refused

    def write_config(self, values: dict[str, Any]) -> None:
        write_json(self.root / CONFIG, values)

    def read_config(self) -> dict[str, Any]:
        self.check_exists()
        values = read_json(self.root / CONFIG, "the run's config", RECORD_BYTES)
        if not isinstance(values, dict):
            raise VaekitError(f"{self.root / CONFIG}: expected a table of settings")
        return values

    def write_data_record(self, record: dict[str, Any]) -> None:
        write_json(self.root / DATA, record)

    def read_data_record(self) -> dict[str, Any]:
        """``data.json`` as a dict; ``{}`` where the run has none."""
        path = self.root / DATA
        if not os.path.lexists(path):
            return {}
        record = read_json(path, "the run's data record", DATA_RECORD_BYTES)
        if not isinstance(record, dict) or not isinstance(record.get("binarize", {}), dict):
            raise VaekitError(f"{path}: not a vaekit data record")
        return record

    # ------------------------------------------------------------------ metrics and results
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.root)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_metrics(self.root, rows)

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_metrics(self.root, row)

    def evaluation_path(self, split: str | None = None) -> Path:
        return self.root / (EVALUATION if split is None else f"evaluation-{split}.json")

    def write_evaluation(self, result: dict[str, Any], split: str | None = None) -> Path:
        path = self.evaluation_path(split)
        write_json(path, result)
        return path

    def figure(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ weights
    def weights_path(self, which: str = "last") -> Path:
        if which not in ("last", "best"):
            raise VaekitError(f"weights must be 'last' or 'best', got '{which}'")
        return self.root / (WEIGHTS if which == "last" else BEST)

    def save_weights(self, model: torch.nn.Module, which: str = "last", **meta: Any) -> None:
        save_weights(model, self.weights_path(which), **meta)

    def weights_shapes(self, which: str = "last") -> dict[str, tuple[int, ...]]:
        """The stored tensors' names and shapes, from the file's header alone (nothing is
        allocated): check them against a model before building it."""
        path = self._existing_weights(which)
        return read_header(path, "the weights")[0]

    def load_weights(self, model: torch.nn.Module, which: str = "last") -> dict[str, Any]:
        """Load the stored weights into ``model`` (checked); returns their metadata."""
        path = self._existing_weights(which)
        state, meta = read_tensors(path, "the weights")
        load_state(model, state, path)
        return meta

    def _existing_weights(self, which: str) -> Path:
        path = self.weights_path(which)
        if not os.path.lexists(path):
            what = "saved weights (did training finish?)" if which == "last" else "best weights (no validation data?)"
            raise VaekitError(f"{self.path}: no {path.name}; the run has no {what}")
        return path

    @property
    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINT


def _place(path: Path) -> str:
    """' (the current folder)' and the like, for folders a mistyped output path tends to name."""
    real = _real(path)
    for name, where in (("the file system root", Path(real.anchor)), ("your home folder", Path.home()),
                        ("the current folder", Path.cwd())):
        with contextlib.suppress(OSError):
            if real == _real(where):
                return f" ({name})"
    return ""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _own(name: str) -> bool:
    """Whether ``name`` is one of a run's own files (dropped when the run is replaced)."""
    return (any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS) or bool(_TEMPORARY.fullmatch(name))
            or name.startswith(".vaekit-write-test."))


def _carry_user_files(source: Path, dest: Path, move: bool = False) -> None:
    """Give ``dest`` the user's files of ``source`` (everything not the run's own): hard
    links (a copy where the file system has none), so the originals stay until the swap is
    done; with ``move``, whatever ``dest`` still lacks is moved."""
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        target = dest / entry.name
        if _own(entry.name) or os.path.lexists(target):
            continue
        try:
            if move:
                os.rename(entry.path, target)
            elif entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            else:
                _link_or_copy(entry.path, target)
        except (OSError, shutil.Error) as err:
            if move:
                continue  # best effort: the swap is done, this file stays with the old run
            raise OSError(errno.EIO, f"cannot carry {entry.path} over to the new run ({err})") from None


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError:
        if not stat.S_ISREG(os.lstat(source).st_mode):
            raise
        shutil.copy2(source, dest)


def _exchange(a: Path, b: Path) -> None:
    """Swap the folders ``a`` and ``b`` in one step (Linux's renameat2 with RENAME_EXCHANGE);
    where that is missing, by three renames."""
    libc = _libc()
    call = getattr(libc, "renameat2", None)
    if call is not None:
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_cwd, exchange = -100, 2
        if call(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(b))
    spare = b.parent / f".{b.name}.vaekit-old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(b, spare)
    try:
        os.rename(a, b)
    except OSError:
        os.rename(spare, b)
        raise
    os.rename(spare, a)


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _acquire(lock_file: Path, run: Path) -> int:
    """An open, exclusively locked ``lock_file`` holding this process's PID."""
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as err:
            raise WriteError(f"cannot lock {run} for writing: {err.strerror or err}") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            from vaekit.errors import RunInUse

            raise RunInUse(
                f"{run} is in use: vaekit process {holder} is writing to it (training or resuming); "
                "wait for it to end, or stop it, then try again"
            ) from None
        except OSError:
            return fd  # a file system without locks: carry on unlocked, as before locks existed
        try:  # the holder may have removed the file between our open and our lock
            current = os.stat(lock_file)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"PID {text}"
    return "(PID unknown)"


def _remove_stale_staging(run: Path) -> None:
    """Remove the hidden sibling folders of replacements that a killed process left (the
    caller holds the run's lock, so no live process owns one)."""
    target = _real(run)
    pattern = re.compile(re.escape(f".{target.name}.vaekit-") + r"(new|old)-\d+-[0-9a-f]{8}")
    try:
        entries = [e for e in os.scandir(target.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = _acquire(Path(entry.path) / LOCK, Path(entry.path))
        except VaekitError:
            continue  # still held: not stale after all
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------- writing
def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write via a temporary file in the same directory, fsync it, rename it over ``path``
    and fsync the directory: readers (and a restart after a crash) see the old file or the
    new one, never a torn one. A failed write (full disk, no permission) leaves ``path`` as
    it was, removes the temporary file and raises :class:`~vaekit.errors.WriteError` naming
    ``path``. The temporary file is locked until it is renamed, so that the next write of
    ``path`` can tell one a killed process left (and remove it) from one still being written."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    remove_temporary_files(path.parent, path.name)
    tmp = None
    try:
        fd, tmp = _create_temporary(path)
        try_lock(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:  # renamed while still locked (Windows cannot rename an open file)
                os.replace(tmp, path)
                tmp = None
        if tmp is not None:
            os.replace(tmp, path)
            tmp = None
        _fsync_directory(path.parent)
    except OSError as err:
        raise WriteError(
            f"could not write {path}: {err.strerror or err}; the previous {path.name}, if any, "
            "is unchanged"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _create_temporary(path: Path) -> tuple[int, str]:
    # Not tempfile.mkstemp: its files are private (0600); this one gets the umask's mode,
    # like any file the user creates.
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_temporary_files(folder: str | Path, name: str | None = None) -> None:
    """Delete the temporary files (``.NAME.PID.RANDOM.tmp``) of writes a killed process
    left in ``folder`` (only those of ``name`` if given). A write in progress holds a lock
    on its temporary file and keeps it; without file locks, only files a day old go."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    now = time.time()
    for entry in names:
        found = _TEMPORARY.fullmatch(entry)
        if not found or (name is not None and found["name"] != name):
            continue
        path = folder / entry
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                info = os.fstat(fd)
                state = try_lock(fd) if stat.S_ISREG(info.st_mode) else "busy"
                if state == "locked" or (state == "unsupported" and now - info.st_mtime > _STALE_AGE):
                    path.unlink()
            finally:
                os.close(fd)


def check_writable(folder: str | Path) -> None:
    """Raise :class:`VaekitError` unless a file can be created in ``folder``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".vaekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise WriteError(f"cannot write to {folder}: {err.strerror or err}") from None


def write_output(path: str | Path, writer: Callable[[io.BytesIO], Any]) -> None:
    """Atomically write what ``writer`` puts in a buffer (``np.save``, ``savefig``, ...):
    a failure leaves no half-written file behind."""
    buffer = io.BytesIO()
    writer(buffer)
    atomic_write(path, buffer.getvalue())


def write_json(path: str | Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------- reading
def read_regular(path: str | Path, what: str, cap: int | None) -> bytes:
    """The bytes of ``path``, which must be a regular file (a FIFO would block for ever,
    ``/dev/zero`` never ends) of at most ``cap`` bytes. FileNotFoundError passes through;
    anything else is a :class:`VaekitError`."""
    path = Path(path)
    with _open_regular(path, what) as (f, size):
        if cap is not None and size > cap:
            raise VaekitError(f"{path} ({what}) is {size:,} bytes, more than the {cap:,} such a file "
                              "may hold; refused")
        try:
            # read(n) allocates n bytes up front: ask for what the file holds, not the cap
            data = f.read(-1 if cap is None else min(size, cap) + 1)
            while cap is not None and len(data) == min(size, cap) + 1 and len(data) <= cap:
                more = f.read(min(1024**2, cap + 1 - len(data)))  # grew since fstat, or a size-0 file
                if not more:
                    break
                data += more
                size = len(data) - 1
        except OSError as err:
            raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    if cap is not None and len(data) > cap:
        raise VaekitError(f"{path} ({what}) holds more than the {cap:,} bytes such a file may hold; refused")
    return data


@contextlib.contextmanager
def _open_regular(path: Path, what: str):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VaekitError(f"{path} ({what}) is {_file_kind(info.st_mode)}, not a regular file; "
                              "vaekit reads only regular files")
        yield f, info.st_size


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


# The longest integer a run's JSON may hold: longer than any vaekit writes (a seed has 20
# digits), and every such integer converts to a float (one of 309 digits would not), so
# readers can compare and format every number; Python refuses to parse over 4300 digits anyway.
MAX_INTEGER_DIGITS = 300


class _LongInteger(ValueError):
    pass


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise _LongInteger(f"holds a {digits:,}-digit integer (at most {MAX_INTEGER_DIGITS} digits are read)")
    return int(text)


def loads(text: str | bytes) -> Any:
    """``json.loads`` for files from a run directory: integers of more than
    :data:`MAX_INTEGER_DIGITS` digits are refused (``ValueError``), so that every number parsed
    converts to a float."""
    return json.loads(text, parse_int=_parse_int)


def read_json(path: Path, what: str, cap: int = RESULT_BYTES) -> Any:
    """A JSON file of at most ``cap`` bytes (a regular file), parsed; see :func:`loads`."""
    try:
        return loads(read_regular(path, what, cap).decode("utf-8"))
    except FileNotFoundError:
        raise VaekitError(
            f"{path.parent}: no {path.name} ({what}); is this a vaekit run directory?"
        ) from None
    except _LongInteger as err:
        raise VaekitError(f"{path}: {what} {err}") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise VaekitError(f"{path}: {what} is not valid JSON ({err})") from None
    except RecursionError:
        raise VaekitError(f"{path}: {what} is not valid JSON (nested too deeply)") from None


def load_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / INFO
    info = read_json(path, "the run's description", RECORD_BYTES)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise VaekitError(f"{path}: run format {found!r} is not one this vaekit reads ({FORMAT})")
    shape = info.get("event_shape")
    if shape is None:
        raise VaekitError(f"{path}: the run never started training (its record has no data shape); "
                          "train it again, replacing it")
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise VaekitError(f"{path}: event_shape must be a list of positive integers, got {shape!r}")
    return info


MAX_EPOCH = 10**9  # larger epoch numbers in metrics.jsonl are damage, not training
MAX_EPOCH_SECONDS = 1e9  # 31 years: an epoch's "seconds" beyond this is damage


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` as a list of epoch records, each checked by :func:`check_epoch_record`."""
    return list(iter_metrics(run_dir))


def iter_metrics(run_dir: str | Path):
    """The epoch records of ``metrics.jsonl`` one at a time, each checked, read line by line
    (a reader that keeps a summary needs memory for one line, not for the file); none where
    the file is missing. The file must be a regular file of at most ``METRICS_BYTES``."""
    path = Path(run_dir) / METRICS
    try:
        opened = _open_regular(path, "the metrics")
        f, size = opened.__enter__()
    except FileNotFoundError:
        return
    try:
        if size > METRICS_BYTES:
            raise VaekitError(f"{path} (the metrics) is {size:,} bytes, more than the {METRICS_BYTES:,} such a "
                              "file may hold; refused")
        read = 0
        for number, line in enumerate(f, 1):
            read += len(line)
            if read > METRICS_BYTES:
                raise VaekitError(f"{path} (the metrics) holds more than the {METRICS_BYTES:,} bytes such a "
                                  "file may hold; refused")
            if line.strip():
                yield parse_epoch_line(line, path, number)
    except OSError as err:
        raise VaekitError(f"cannot read {path} (the metrics): {err.strerror or err}") from None
    finally:
        opened.__exit__(None, None, None)


def parse_epoch_line(line: str | bytes, path: Path, number: int) -> dict[str, Any]:
    """One line of ``metrics.jsonl``, parsed and checked; a :class:`VaekitError` naming the
    file and the line otherwise."""
    try:
        row = loads(line)
    except _LongInteger as err:
        raise VaekitError(f"{path}: line {number} {err}") from None
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise VaekitError(f"{path}: line {number} is not valid JSON") from None
    problem = check_epoch_record(row)
    if problem:
        raise VaekitError(f"{path}: line {number} {problem}")
    return row


def check_epoch_record(row: Any) -> str | None:
    """What is wrong with one epoch's record, or None: an object whose ``epoch`` is a whole
    number from 0 to :data:`MAX_EPOCH` and whose ``seconds``, where given, a duration from 0
    to :data:`MAX_EPOCH_SECONDS`. Other values are for their readers to check (a NaN ELBO is
    a real outcome)."""
    if not isinstance(row, dict) or "epoch" not in row:
        return "is not an epoch's record (an object with 'epoch')"
    epoch = row["epoch"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= MAX_EPOCH):
        return f"has epoch {_short_repr(epoch)}, not a whole number from 0 to {MAX_EPOCH:,}"
    seconds = row.get("seconds")
    if seconds is not None and not (isinstance(seconds, int | float) and not isinstance(seconds, bool)
                                    and 0 <= seconds <= MAX_EPOCH_SECONDS):
        return f"has seconds {_short_repr(seconds)}, not a duration from 0 to {MAX_EPOCH_SECONDS:g} s"
    return None


def _short_repr(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` by ``rows`` (the checkpoint's copy is the authority on resume)."""
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(run_dir: str | Path, row: dict[str, Any]) -> None:
    """Add one epoch's line; a failed write is rolled back so the file never ends torn."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            size = f.tell()
            try:
                f.write(json.dumps(row) + "\n")
                f.flush()
            except OSError:
                f.truncate(size)
                raise
    except OSError as err:
        raise WriteError(f"could not write {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------- tensors
def encode_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> bytes:
    """safetensors bytes of ``tensors``, with ``meta`` as JSON under the header's one
    ``vaekit`` key (one key: safetensors stores metadata unordered, and one key keeps the
    bytes reproducible), plus a SHA-256 over the names, shapes, values and ``meta`` that
    :func:`read_tensors` checks."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = dict(meta or {})
    meta["sha256"] = tensors_digest(tensors, meta)
    return save(tensors, metadata={"vaekit": json.dumps(meta, sort_keys=True)})


def _unreadable(path: Path, what: str, reason: Any) -> VaekitError:
    return VaekitError(
        f"{path} ({what}) is not a readable safetensors file ({reason}); it may be truncated, "
        "or not a safetensors file at all"
    )


def read_tensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, vaekit metadata) of a safetensors file, refusing anything else (a pickle,
    a truncated file, a FIFO or device) and any file whose vaekit checksum does not match
    its content. A safetensors file from elsewhere (no vaekit metadata) gives empty metadata."""
    try:
        data = read_regular(path, what, None)
    except FileNotFoundError:
        raise VaekitError(f"{path.parent}: no {path.name} ({what})") from None
    return decode_tensors(data, path, what)


def decode_tensors(data: bytes, path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_tensors` of a file's bytes read elsewhere (another rank sent them);
    ``path`` names the file in messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        meta = json.loads(header.get("vaekit", "{}"))
        if not isinstance(meta, dict):
            raise ValueError("its vaekit metadata is not a table")
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, RecursionError) as err:
        raise _unreadable(path, what, err) from None
    digest = meta.pop("sha256", None)
    if digest is not None and digest != tensors_digest(tensors, meta):
        raise VaekitError(
            f"{path}: {what} does not match its checksum: the file was damaged or edited"
        )
    return tensors, meta


def read_header(path: Path, what: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """({tensor name: shape}, vaekit metadata) from a safetensors file's header alone: the
    tensors are neither read nor allocated. The header must describe the whole file."""
    try:
        with _open_regular(path, what) as (f, size):
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= min(HEADER_BYTES, size - 8):
                raise _unreadable(path, what, f"a header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise VaekitError(f"{path.parent}: no {path.name} ({what})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise _unreadable(path, what, err) from None
    except OSError as err:
        raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    try:
        meta = json.loads((header.pop("__metadata__", None) or {}).get("vaekit", "{}"))
        shapes, end = {}, 0
        for name, entry in header.items():
            shape, (start, stop) = entry["shape"], entry["data_offsets"]
            if not all(isinstance(s, int) and s >= 0 for s in shape) or not 0 <= start <= stop:
                raise ValueError(f"tensor {name} has a bad shape or offsets")
            shapes[name], end = tuple(shape), max(end, stop)
        if 8 + length + end != size:
            raise ValueError(f"the header describes {8 + length + end} bytes, the file has {size}")
        if not isinstance(meta, dict):
            raise ValueError("its vaekit metadata is not a table")
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as err:
        raise _unreadable(path, what, err) from None
    return shapes, meta


def tensors_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 over ``meta`` and each tensor's name, dtype, shape and values (CPU tensors)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_weights(model: torch.nn.Module, path: str | Path, **meta: Any) -> None:
    atomic_write(path, encode_tensors(model.state_dict(), meta))


def mismatch(expected: dict[str, tuple[int, ...] | None], stored: dict[str, tuple[int, ...]]) -> str | None:
    """What keeps ``stored`` tensor shapes from fitting a model whose state has ``expected``
    shapes (``None``: a parameter not sized yet, which takes the stored shape); None if they fit."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = [k for k, shape in expected.items() if k in stored and shape is not None and tuple(stored[k]) != shape]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:4])}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:4])}")
    if wrong:
        k = wrong[0]
        parts.append(f"{k} has shape {tuple(stored[k])}, the model needs {expected[k]}")
    return f"weights do not match the model ({'; '.join(parts)})"


def state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...] | None]:
    """The shapes of ``model``'s state (``None`` for parameters not sized yet); works on a
    model built on the ``meta`` device, which allocates nothing."""
    return {k: None if isinstance(v, torch.nn.parameter.UninitializedParameter) else tuple(v.shape)
            for k, v in model.state_dict(keep_vars=True).items()}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` after checking names, shapes, dtypes and finiteness
    (parameters not yet sized, such as a lazily built per-dimension σ_G, take the stored
    shape); the model keeps its device."""
    problem = mismatch(state_shapes(model), {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise VaekitError(f"{path}: {problem}")
    _materialize(model, state)
    expected = model.state_dict()
    kinds = [k for k in expected if state[k].dtype != expected[k].dtype]
    if kinds:
        k = kinds[0]
        raise VaekitError(f"{path}: {k} is stored as {state[k].dtype}, the model uses {expected[k].dtype}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise VaekitError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:4])})")
    model.load_state_dict(state)


def _materialize(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if isinstance(param, torch.nn.UninitializedParameter) and name in state:
            param.materialize(state[name].shape)
