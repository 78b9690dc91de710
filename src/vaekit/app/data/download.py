"""Published dataset files: a local cache, mirrors, and atomic, verified downloads.

Files live in ``$VAEKIT_DATA/<dataset>/<official file name>`` (default: the user cache dir,
``~/.cache/vaekit`` on Linux). A download streams to a temporary ``.part`` file in that folder
and is checked as it arrives: it may not grow beyond what the file can be, nor decompress to
more than the official contents, nor take longer than ``$VAEKIT_DOWNLOAD_DEADLINE`` seconds,
nor bring less than ``$VAEKIT_DOWNLOAD_SPEED_LIMIT`` bytes/s over any
``$VAEKIT_DOWNLOAD_SPEED_TIME`` seconds (curl's ``--speed-limit``/``--speed-time``: a stalled
mirror is left within a minute, a slow but steady one still finishes).
It is renamed to its official name only after its checksum matched, so a failed,
interrupted or corrupted transfer never leaves a file a later run would trust. Every read
checks the checksum again: a file damaged in the cache is fetched anew, a damaged file in
a user's ``--data-dir`` is reported (never touched).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import http.client
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vaekit.app.data.progress import progress, say
from vaekit.errors import VaekitError
from vaekit.locks import try_lock

try:
    import fcntl
except ImportError:  # Windows: stale .part files are recognised by their age instead
    fcntl = None

ENV_CACHE = "VAEKIT_DATA"
ENV_MIRROR = "VAEKIT_MIRROR"
ENV_DEADLINE = "VAEKIT_DOWNLOAD_DEADLINE"
ENV_SPEED_LIMIT = "VAEKIT_DOWNLOAD_SPEED_LIMIT"
ENV_SPEED_TIME = "VAEKIT_DOWNLOAD_SPEED_TIME"
TIMEOUT = 30.0  # seconds one network read may wait
DEADLINE = 15 * 60.0  # seconds one file may take from one mirror (~30 KB/s for Fashion-MNIST's largest)
# The slowest transfer kept: 1 KiB/s averaged over 30 s. A mirror sending one byte every 5 s is
# left after 30 s instead of holding on for the whole deadline, while one that keeps up 30 KB/s
# (which the deadline allows for) is far above it.
SPEED_LIMIT = 1024.0  # bytes per second
SPEED_TIME = 30.0  # seconds: the sliding window the rate is averaged over
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
UNPINNED_SIZE = 1 << 30  # the most a file whose size is not pinned may decompress to


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``sha256``: of its decompressed contents (any faithful copy
    passes, however it was compressed); ``md5``: of the file exactly as published;
    ``size``: bytes of the decompressed contents, which bounds what a download may bring
    and what decompressing it may produce (a gzip bomb is stopped at that size)."""

    name: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    @property
    def max_contents(self) -> int:
        return self.size or UNPINNED_SIZE

    @property
    def max_download(self) -> int:
        # deflate's worst case (incompressible data, stored blocks) adds well under 1/1000,
        # and gzip's optional header fields are at most 64 KiB
        return self.max_contents + self.max_contents // 1000 + (64 << 10)


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]
    download_size: str = "?"
    verified_by: str = ""

    def __post_init__(self) -> None:
        for f in self.files:
            if not (f.sha256 or f.md5):
                raise ValueError(f"{self.name}/{f.name}: a remote file needs a checksum")


class Corrupt(Exception):
    """A file's contents do not match its published checksum (message says how)."""


class DownloadFailed(Exception):
    def __init__(self, attempts: list[str]):
        super().__init__("; ".join(attempts))
        self.attempts = attempts


# ---------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """``$VAEKIT_DATA``, else the platform's user cache folder + ``vaekit``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "vaekit"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "vaekit" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaekit"


def mirrors(dataset: RemoteDataset, mirror: str | None = None) -> list[str]:
    """Base URLs to try in order: ``mirror`` (comma-separated for several), else
    ``$VAEKIT_MIRROR``, else the dataset's built-in list (official hosts first)."""
    text = mirror or os.environ.get(ENV_MIRROR) or ""
    chosen = [m for m in text.replace(",", " ").split() if m] or list(dataset.mirrors)
    return [m.rstrip("/") for m in chosen]


def status(dataset: RemoteDataset, folder: Path | None = None) -> tuple[int, int]:
    """(files present, bytes on disk) in the dataset's cache folder (no checksums read)."""
    folder = folder or cache_dir() / dataset.name
    present = [folder / f.name for f in dataset.files if (folder / f.name).is_file()]
    return len(present), sum(p.stat().st_size for p in present)


# ---------------------------------------------------------------------- reading
def read_verified(path: Path, file: RemoteFile, quiet: bool = False) -> bytes:
    """The decompressed contents of ``path``, checked against ``file``'s checksums and size."""
    with open(path, "rb") as f, progress(f"reading {path.name}", os.fstat(f.fileno()).st_size, quiet,
                                         unit_bytes=True) as advance:
        def pull() -> bytes:
            chunk = f.read(CHUNK)
            advance(len(chunk))
            return chunk

        return _verified(_Raw(pull, file.max_download), file, keep=True)


class _Raw:
    """The bytes of a file as they come (``pull`` gives the next piece, b"" at the end):
    counted against ``limit``, md5-hashed and copied to ``sink`` on the way, with a
    one-piece look-ahead so gzip can be detected before anything is decompressed."""

    def __init__(self, pull: Callable[[], bytes], limit: int, sink: BinaryIO | None = None):
        self._pull, self.limit, self.sink = pull, limit, sink
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.count = 0
        self._ahead, self._at = b"", 0

    def _next(self) -> bytes:
        chunk = self._pull()
        self.count += len(chunk)
        if self.count > self.limit:
            raise Corrupt(f"larger than the {self.limit} bytes the file can take; stopped there and refused")
        self.md5.update(chunk)
        if self.sink is not None:
            self.sink.write(chunk)
        return chunk

    def peek(self, n: int) -> bytes:
        while len(self._ahead) - self._at < n and (chunk := self._next()):
            self._ahead, self._at = self._ahead[self._at:] + chunk, 0
        return self._ahead[self._at : self._at + n]

    def read(self, n: int = CHUNK) -> bytes:
        if self._at >= len(self._ahead):
            # gzip reads its zero padding a byte at a time: slicing one pulled piece
            # (never re-copying the rest) keeps that linear
            self._ahead, self._at = self._next(), 0
        n = len(self._ahead) if n < 0 else n
        out = self._ahead[self._at : self._at + n]
        self._at += len(out)
        return out


def _verified(raw: _Raw, file: RemoteFile, keep: bool = False) -> bytes:
    """Read ``raw`` to its end, decompressing gzip as it goes (never more than the file's
    size), and check the checksums; the contents if ``keep`` (else b""). Raises :class:`Corrupt`."""
    compressed = raw.peek(2) == GZIP_MAGIC
    if file.md5 and not compressed and not file.sha256:
        raise Corrupt(
            "cannot be verified: only the md5 of the published .gz file is known, "
            "so keep the file compressed as published"
        )
    # GzipFile decompresses in bounded pieces, handles several members and zero padding,
    # and checks each member's CRC and length
    source = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    sha, parts, size = hashlib.sha256(), [], 0
    try:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > file.max_contents:
                what = "decompresses to" if compressed else "holds"
                bomb = ", or a decompression bomb" if compressed else ""
                raise Corrupt(
                    f"{what} more than {file.max_contents} bytes, the size of the official file "
                    f"(damaged{bomb}); stopped there and refused"
                )
            sha.update(chunk)
            if keep:
                parts.append(chunk)
    except EOFError:
        raise Corrupt("the gzip data ends early (the file is truncated)") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise Corrupt(f"not a valid gzip file ({err})") from None
    if file.md5 and compressed:
        digest = raw.md5.hexdigest()
        if digest != file.md5:
            raise Corrupt(f"md5 {digest} does not match the published {file.md5}")
    if file.sha256:
        digest = sha.hexdigest()
        if digest != file.sha256:
            raise Corrupt(f"sha256 of the decompressed contents is {digest}, expected {file.sha256}")
    return b"".join(parts)


# ---------------------------------------------------------------------- fetching
def fetch_file(file: RemoteFile, folder: Path, bases: list[str], quiet: bool = False) -> Path:
    """Download ``file`` into ``folder`` from the first base URL that serves it intact."""
    target = folder / file.name
    deadline = download_deadline()
    speed = minimum_speed()
    attempts = []
    for base in bases:
        url = f"{base}/{file.name}"
        say(f"downloading {url}", quiet)
        try:
            _download(url, file, target, deadline, quiet, speed)
        except Corrupt as err:
            attempts.append(f"{url}: downloaded file rejected: {err}")
        except _TRANSFER_ERRORS as err:
            attempts.append(f"{url}: {_reason(err)}")
        else:
            return target
    raise DownloadFailed(attempts)


def download_deadline() -> float:
    """Seconds one file may take from one mirror: ``$VAEKIT_DOWNLOAD_DEADLINE``, else ``DEADLINE``."""
    text = os.environ.get(ENV_DEADLINE, "").strip()
    if not text:
        return DEADLINE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise VaekitError(f"{ENV_DEADLINE} must be a number of seconds above 0, got '{text}'")
    return value


def minimum_speed() -> tuple[float, float]:
    """(bytes per second, seconds): a transfer bringing less than that rate over any window of
    that length is given up. ``$VAEKIT_DOWNLOAD_SPEED_LIMIT`` (0 turns the check off) and
    ``$VAEKIT_DOWNLOAD_SPEED_TIME``, else :data:`SPEED_LIMIT` and :data:`SPEED_TIME`."""
    values = []
    for name, default, lowest in ((ENV_SPEED_LIMIT, SPEED_LIMIT, "0 or more"), (ENV_SPEED_TIME, SPEED_TIME, "above 0")):
        text = os.environ.get(name, "").strip()
        if not text:
            values.append(default)
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (0 <= value < float("inf")) or (value == 0 and name == ENV_SPEED_TIME):
            unit = "bytes per second" if name == ENV_SPEED_LIMIT else "seconds"
            raise VaekitError(f"{name} must be a number of {unit} {lowest}, got '{text}'")
        values.append(value)
    return values[0], values[1]


class _RateWatch:
    """Gives up on a transfer whose rate over the last ``window`` seconds fell below ``limit``
    bytes per second (checked whenever a read returns; a read that brings nothing at all
    ends at the socket's timeout)."""

    def __init__(self, limit: float, window: float, start: float):
        self.limit, self.window, self.start = limit, window, start
        self.marks = collections.deque([(start, 0)])  # (time, bytes so far)

    def check(self, now: float, count: int) -> None:
        if self.limit <= 0:
            return
        self.marks.append((now, count))
        while len(self.marks) > 1 and self.marks[1][0] <= now - self.window:
            self.marks.popleft()  # keep the last mark at or before the window's start
        if now - self.start < self.window:
            return
        brought = count - self.marks[0][1]
        if brought < self.limit * self.window:
            raise _Interrupted(
                f"gave up after {now - self.start:.3g} s: {brought} bytes in the last {self.window:g} s "
                f"({count} in all), below the minimum of {self.limit:g} bytes/s (a stalled mirror; "
                f"set {ENV_SPEED_LIMIT}=BYTES_PER_SECOND, 0 for no minimum, or {ENV_SPEED_TIME}=SECONDS)"
            )


def contents(
    dataset: RemoteDataset, data_dir: str | Path | None = None, mirror: str | None = None,
    quiet: bool = False,
) -> dict[str, bytes]:
    """Verified decompressed contents of every file of ``dataset``, by official name.

    With ``data_dir`` the files must already be there (as published, or decompressed where
    a sha256 of the contents is pinned); otherwise the cache is used and filled as needed.
    """
    if data_dir is not None:
        return _from_folder(dataset, Path(data_dir), quiet)
    folder = fetch(dataset, mirror=mirror, quiet=quiet)
    out = {}
    for file in dataset.files:
        path = folder / file.name
        try:
            out[file.name] = read_verified(path, file, quiet)
        except Corrupt as err:
            say(f"{path} failed its checksum ({err}); downloading it again", quiet)
            path.unlink(missing_ok=True)
            _fetch_missing(dataset, folder, [file], mirror, quiet, damaged=str(err))
            try:
                out[file.name] = read_verified(path, file, quiet)
            except Corrupt as again:
                raise VaekitError(f"{path}: {again}") from None
    return out


def fetch(
    dataset: RemoteDataset, mirror: str | None = None, dest: str | Path | None = None,
    quiet: bool = False, verify: bool = False,
) -> Path:
    """Make sure every file of ``dataset`` is in ``dest`` (default: its cache folder),
    downloading what is missing; with ``verify`` also re-check (and re-fetch) present ones."""
    folder = Path(dest) if dest is not None else cache_dir() / dataset.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaekitError(
            f"cannot create the data folder {folder}: {err.strerror or err}; "
            f"set {ENV_CACHE} to a writable folder"
        ) from None
    _remove_stale_parts(folder)
    if verify:
        for file in dataset.files:
            path = folder / file.name
            if path.is_file():
                try:
                    read_verified(path, file, quiet)
                except Corrupt as err:
                    say(f"{path} failed its checksum ({err}); downloading it again", quiet)
                    path.unlink()
    missing = [f for f in dataset.files if not (folder / f.name).is_file()]
    if missing:
        _fetch_missing(dataset, folder, missing, mirror, quiet)
    return folder


def _fetch_missing(
    dataset: RemoteDataset, folder: Path, missing: list[RemoteFile], mirror: str | None,
    quiet: bool, damaged: str | None = None,
) -> None:
    bases = mirrors(dataset, mirror)
    for i, file in enumerate(missing):
        try:
            fetch_file(file, folder, bases, quiet)
        except DownloadFailed as failed:
            message = _failure_message(dataset, folder, missing[i:], bases, failed, damaged)
            raise VaekitError(message) from None


def _failure_message(
    dataset: RemoteDataset, folder: Path, missing: list[RemoteFile], bases: list[str],
    failed: DownloadFailed, damaged: str | None,
) -> str:
    names = ", ".join(f.name for f in missing)
    damage = f" (the cached copy was damaged: {damaged}; it was removed)" if damaged else ""
    tried = "; ".join(" ".join(attempt.split()) for attempt in failed.attempts)  # one line each
    return (
        f"cannot get the {dataset.name} files {names}{damage}; for {missing[0].name}, tried {tried}; "
        f"put the official files in {folder} (or pass --data-dir FOLDER holding them), "
        f"or name a reachable mirror with --mirror URL or {ENV_MIRROR} "
        "(files are fetched as URL/<official file name>)"
    )


def _from_folder(dataset: RemoteDataset, folder: Path, quiet: bool) -> dict[str, bytes]:
    if not folder.is_dir():
        raise VaekitError(f"--data-dir {folder} is not a folder")
    found, missing = {}, []
    for file in dataset.files:
        plain = file.name[:-3] if file.name.endswith(".gz") else file.name
        candidates = [folder / file.name] + ([folder / plain] if file.sha256 else [])
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(file.name)
        else:
            found[file] = path
    if missing:
        raise VaekitError(
            f"--data-dir {folder} lacks the {dataset.name} file(s) {', '.join(missing)}; put the "
            f"official files there, or leave out --data-dir to download them into "
            f"{cache_dir() / dataset.name}"
        )
    out = {}
    for file, path in found.items():
        try:
            out[file.name] = read_verified(path, file, quiet)
        except Corrupt as err:
            raise VaekitError(
                f"{path}: {err}; the file is damaged or not the official {file.name}: replace it"
            ) from None
    return out


# ---------------------------------------------------------------------- transfer
_TRANSFER_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


class _Interrupted(OSError):
    pass


def _download(url: str, file: RemoteFile, target: Path, deadline: float, quiet: bool,
              speed: tuple[float, float] = (SPEED_LIMIT, SPEED_TIME)) -> None:
    """Stream ``url`` through a locked temporary ``.part`` file next to ``target``, verifying
    it on the way, and rename it to ``target`` once it passed. ``speed``: the minimum rate
    (bytes per second, over a window of seconds) below which the transfer is given up."""
    from vaekit import __version__

    start = time.monotonic()
    watch = _RateWatch(*speed, start)
    fd, part = _new_part(target)
    try:
        with os.fdopen(fd, "wb") as out:  # closing it releases the lock
            request = urllib.request.Request(url, headers={"User-Agent": f"vaekit/{__version__}"})
            with urllib.request.urlopen(request, timeout=min(TIMEOUT, deadline)) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > file.max_download:
                    raise Corrupt(f"the server announces {total} bytes, more than the {file.max_download} "
                                  "the file can take")
                # read1 returns whatever one network read brought, so a trickle of bytes
                # cannot keep a read (and the deadline check) waiting
                read = getattr(response, "read1", response.read)
                with progress(file.name, total, quiet, unit_bytes=True) as advance:
                    def pull() -> bytes:
                        if time.monotonic() - start > deadline:
                            of = "" if total is None else f" of {total}"
                            raise _Interrupted(
                                f"gave up after {deadline:g} s with {raw.count}{of} bytes received "
                                f"(the deadline per file; set {ENV_DEADLINE}=SECONDS to allow longer)"
                            )
                        chunk = read(CHUNK)
                        if not chunk and total is not None and raw.count < total:
                            raise _Interrupted(f"transfer interrupted after {raw.count} of {total} bytes")
                        if chunk:
                            watch.check(time.monotonic(), raw.count + len(chunk))
                        advance(len(chunk))
                        return chunk

                    raw = _Raw(pull, file.max_download, sink=out)
                    _verified(raw, file)
            out.flush()
            os.fsync(out.fileno())
            if fcntl is not None:  # renamed while still locked, so no cleanup can take it first
                os.replace(part, target)
        if fcntl is None:  # Windows cannot rename an open file
            os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _new_part(target: Path) -> tuple[int, Path]:
    """A new, locked ``.<name>.<random>.part`` file next to ``target``. Its mode is the umask's
    usual one (mkstemp's 0600 would carry over to the cached file); the lock, held until the
    download ends, tells a later cleanup that a live process still writes it."""
    while True:
        part = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if try_lock(fd) != "busy":
            return fd, part
        os.close(fd)  # a cleanup took it between creation and locking: it removes the file


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    if isinstance(err, http.client.IncompleteRead):
        return f"transfer interrupted after {len(err.partial)} bytes"
    if isinstance(err, http.client.HTTPException):
        return f"transfer failed ({type(err).__name__}: {err})"
    return str(err) or type(err).__name__


def _remove_stale_parts(folder: Path, age: float = 24 * 3600) -> None:
    """Drop ``.part`` files a killed process left behind (never trusted, only clutter): a
    running download holds a lock on its own. Without locks, only old ones go."""
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if fcntl is None:
                if now - part.stat().st_mtime > age:
                    part.unlink()
                continue
            fd = os.open(part, os.O_RDONLY)
            try:
                state = try_lock(fd)
                if state == "locked" or (state == "unsupported" and now - os.fstat(fd).st_mtime > age):
                    part.unlink()
            finally:
                os.close(fd)
        except OSError:
            pass
