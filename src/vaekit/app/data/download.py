"""Published dataset files: a local cache, mirrors, and atomic, verified downloads.

Files live in ``$VAEKIT_DATA/<dataset>/<official file name>`` (default: the user cache dir,
``~/.cache/vaekit`` on Linux). A download goes to a temporary ``.part`` file in that folder
and is renamed to its official name only after its checksum matched, so a failed,
interrupted or corrupted transfer never leaves a file a later run would trust. Every read
checks the checksum again: a file damaged in the cache is fetched anew, a damaged file in
a user's ``--data-dir`` is reported (never touched).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from vaekit.app.data.progress import progress, say
from vaekit.errors import VaekitError

ENV_CACHE = "VAEKIT_DATA"
ENV_MIRROR = "VAEKIT_MIRROR"
TIMEOUT = 30.0
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``sha256``: of its decompressed contents (any faithful copy
    passes, however it was compressed); ``md5``: of the file exactly as published."""

    name: str
    sha256: str | None = None
    md5: str | None = None


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
    """The decompressed contents of ``path``, checked against ``file``'s checksums."""
    raw = path.read_bytes()
    compressed = raw[:2] == GZIP_MAGIC
    if file.md5:
        if not compressed and not file.sha256:
            raise Corrupt(
                "cannot be verified: only the md5 of the published .gz file is known, "
                "so keep the file compressed as published"
            )
        if compressed:
            digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
            if digest != file.md5:
                raise Corrupt(f"md5 {digest} does not match the published {file.md5}")
    contents = decompress(raw, path.name, quiet) if compressed else raw
    if file.sha256:
        digest = hashlib.sha256(contents).hexdigest()
        if digest != file.sha256:
            raise Corrupt(
                f"sha256 of the decompressed contents is {digest}, expected {file.sha256}"
            )
    return contents


def decompress(raw: bytes, label: str, quiet: bool = False) -> bytes:
    """gzip ``raw`` decompressed in chunks (CRC and length checked by zlib)."""
    parts: list[bytes] = []
    view = memoryview(raw)
    inflater = zlib.decompressobj(wbits=31)
    pos = 0
    try:
        with progress(f"decompressing {label}", len(raw), quiet, unit_bytes=True) as advance:
            while pos < len(raw):
                chunk = view[pos : pos + CHUNK]
                parts.append(inflater.decompress(chunk))
                rest = len(inflater.unused_data) if inflater.eof else 0
                pos += len(chunk) - rest
                advance(len(chunk) - rest)
                if inflater.eof and pos < len(raw):
                    if not any(view[pos:]):  # zero padding after the last member
                        break
                    inflater = zlib.decompressobj(wbits=31)  # a further gzip member
    except zlib.error as err:
        raise Corrupt(f"not a valid gzip file ({err})") from None
    if not inflater.eof:
        raise Corrupt("the gzip data ends early (the file is truncated)")
    return b"".join(parts)


# ---------------------------------------------------------------------- fetching
def fetch_file(file: RemoteFile, folder: Path, bases: list[str], quiet: bool = False) -> Path:
    """Download ``file`` into ``folder`` from the first base URL that serves it intact."""
    target = folder / file.name
    attempts = []
    for base in bases:
        url = f"{base}/{file.name}"
        say(f"downloading {url}", quiet)
        try:
            part = _download(url, folder, file.name, quiet)
        except _TRANSFER_ERRORS as err:
            attempts.append(f"{url}: {_reason(err)}")
            continue
        try:
            read_verified(part, file, quiet=True)
        except Corrupt as err:
            part.unlink(missing_ok=True)
            attempts.append(f"{url}: downloaded file rejected: {err}")
            continue
        os.replace(part, target)
        return target
    raise DownloadFailed(attempts)


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
    lines = [f"cannot get the {dataset.name} files {names}"]
    if damaged:
        lines[0] += f" (the cached copy was damaged: {damaged}; it was removed)"
    lines.append(f"tried, for {missing[0].name}:")
    lines += [f"  {attempt}" for attempt in failed.attempts]
    lines.append(
        f"put the official files in {folder} (or pass --data-dir FOLDER holding them), "
        f"or name a reachable mirror with --mirror URL or {ENV_MIRROR} "
        "(files are fetched as URL/<official file name>)"
    )
    return "\n".join(lines)


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


def _download(url: str, folder: Path, name: str, quiet: bool) -> Path:
    """Stream ``url`` into a temporary ``.<name>.*.part`` file in ``folder``; return it."""
    from vaekit import __version__

    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": f"vaekit/{__version__}"})
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = 0
                with progress(name, total, quiet, unit_bytes=True) as advance:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        advance(len(chunk))
            if total is not None and done != total:
                raise _Interrupted(f"transfer interrupted after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


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
    """Drop ``.part`` files a killed process left behind (never trusted, only clutter);
    young ones may belong to a download running right now."""
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > age:
                part.unlink()
        except OSError:
            pass
