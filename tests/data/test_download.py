"""Downloads end to end against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import gzip
import io
import os
import time

import numpy as np
import pytest

from vaekit.app.data import download as dl
from vaekit.errors import VaekitError

from .helpers import dead_url, gz, idx_bytes, md5, sha256

IMAGES = idx_bytes(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
LABELS = idx_bytes(np.array([4, 7], dtype=np.uint8))


def toy(md5_only: bool = False, sized: bool = False) -> dl.RemoteDataset:
    def remote(name, body):
        size = {"size": len(body)} if sized else {}
        if md5_only:
            return dl.RemoteFile(name, md5=md5(gz(body)), **size)
        return dl.RemoteFile(name, sha256=sha256(body), **size)

    return dl.RemoteDataset("toy", (remote("images.gz", IMAGES), remote("labels.gz", LABELS)),
                            mirrors=(dead_url(),))


def serve(server, prefix: str = "/a", **overrides) -> None:
    """Serve both toy files under ``prefix``; ``overrides`` replace a file's (behaviour, body)."""
    files = {"images.gz": ("ok", gz(IMAGES)), "labels.gz": ("ok", gz(LABELS))}
    files.update(overrides)
    for name, route in files.items():
        server.routes[f"{prefix}/{name}"] = route


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_verifies_and_caches_then_works_offline(http_server, private_cache):
    serve(http_server)
    got = dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert got == {"images.gz": IMAGES, "labels.gz": LABELS}
    assert leftovers(private_cache / "toy") == ["images.gz", "labels.gz"]
    assert http_server.requests == ["/a/images.gz", "/a/labels.gz"]
    # second use: read from the cache, no network (the default mirror is a dead URL)
    assert dl.contents(toy(), quiet=True) == got
    assert len(http_server.requests) == 2


def test_checksum_mismatch_is_refused_and_leaves_nothing(http_server, private_cache):
    serve(http_server, **{"images.gz": ("ok", gz(IMAGES[:-1] + b"\x01"))})
    with pytest.raises(VaekitError) as err:
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    message = str(err.value)
    assert "sha256" in message and f"{http_server.url}/a/images.gz" in message
    assert leftovers(private_cache / "toy") == []


def test_truncated_gzip_is_refused(http_server, private_cache):
    serve(http_server, **{"labels.gz": ("ok", gz(LABELS)[:-6])})
    with pytest.raises(VaekitError, match="truncated"):
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert "labels.gz" not in leftovers(private_cache / "toy")
    assert not [f for f in leftovers(private_cache / "toy") if f.endswith(".part")]


def test_interrupted_transfer_leaves_no_partial_file(http_server, private_cache):
    serve(http_server, **{"images.gz": ("interrupt", gz(IMAGES) + bytes(5000))})
    with pytest.raises(VaekitError, match="interrupted"):
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert leftovers(private_cache / "toy") == []


def test_404_falls_back_to_the_next_mirror(http_server, private_cache):
    serve(http_server, prefix="/good")
    mirrors = f"{http_server.url}/gone,{http_server.url}/good"
    got = dl.contents(toy(), mirror=mirrors, quiet=True)
    assert got["images.gz"] == IMAGES
    assert http_server.requests[:2] == ["/gone/images.gz", "/good/images.gz"]


def test_corrupt_or_interrupted_mirror_falls_back_too(http_server, private_cache):
    serve(http_server, prefix="/bad", **{"images.gz": ("interrupt", gz(IMAGES)),
                                         "labels.gz": ("ok", gz(LABELS + b"x"))})
    serve(http_server, prefix="/good")
    got = dl.contents(toy(), mirror=f"{http_server.url}/bad,{http_server.url}/good", quiet=True)
    assert got == {"images.gz": IMAGES, "labels.gz": LABELS}
    assert leftovers(private_cache / "toy") == ["images.gz", "labels.gz"]


def test_offline_message_names_files_folder_and_urls(private_cache):
    url = dead_url()
    with pytest.raises(VaekitError) as err:
        dl.contents(toy(), mirror=url, quiet=True)
    message = str(err.value)
    for needed in ("images.gz", "labels.gz", str(private_cache / "toy"), f"{url}/images.gz",
                   "unreachable", "--data-dir", "--mirror", "VAEKIT_MIRROR"):
        assert needed in message, needed
    assert "\n" not in message  # one line, however many mirrors were tried
    assert leftovers(private_cache / "toy") == []


def test_corrupt_cached_file_is_fetched_again(http_server, private_cache):
    serve(http_server)
    dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    cached = private_cache / "toy" / "images.gz"
    cached.write_bytes(gz(b"not the images"))
    assert dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)["images.gz"] == IMAGES
    assert http_server.requests.count("/a/images.gz") == 2


def test_corrupt_cached_file_reported_when_it_cannot_be_fetched(http_server, private_cache):
    serve(http_server)
    dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    (private_cache / "toy" / "labels.gz").write_bytes(b"\x1f\x8b garbage")
    http_server.routes.clear()
    with pytest.raises(VaekitError) as err:
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert "damaged" in str(err.value) and "HTTP 404" in str(err.value)
    assert not (private_cache / "toy" / "labels.gz").exists()


def test_data_dir_is_read_as_is_and_never_touched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "images.gz").write_bytes(gz(IMAGES))
    (folder / "labels").write_bytes(LABELS)  # decompressed copies are fine where sha256 is pinned
    assert dl.contents(toy(), data_dir=folder, quiet=True) == {"images.gz": IMAGES, "labels.gz": LABELS}
    (folder / "labels").write_bytes(LABELS[:-1])
    with pytest.raises(VaekitError, match=r"labels: sha256 .* replace it"):
        dl.contents(toy(), data_dir=folder, quiet=True)
    assert (folder / "labels").read_bytes() == LABELS[:-1]


def test_data_dir_missing_files_are_named(tmp_path):
    with pytest.raises(VaekitError, match=r"lacks the toy file\(s\) images.gz, labels.gz"):
        dl.contents(toy(), data_dir=tmp_path, quiet=True)
    with pytest.raises(VaekitError, match="is not a folder"):
        dl.contents(toy(), data_dir=tmp_path / "nope", quiet=True)


def test_md5_of_published_gz(http_server, tmp_path):
    serve(http_server)
    assert dl.contents(toy(md5_only=True), mirror=f"{http_server.url}/a", quiet=True)["labels.gz"] == LABELS
    # the same contents compressed differently fail an md5 of the .gz: refused, never trusted
    recompressed = gzip.compress(IMAGES, compresslevel=1, mtime=1)
    assert recompressed != gz(IMAGES) and gzip.decompress(recompressed) == IMAGES
    serve(http_server, prefix="/re", **{"images.gz": ("ok", recompressed)})
    fresh = tmp_path / "fresh"
    with pytest.raises(VaekitError, match="md5"):
        dl.fetch(toy(md5_only=True), mirror=f"{http_server.url}/re", dest=fresh, quiet=True)
    # a decompressed copy cannot be checked against the md5 of a .gz
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "images").write_bytes(IMAGES)
    (folder / "labels.gz").write_bytes(gz(LABELS))
    with pytest.raises(VaekitError, match="lacks the toy file"):
        dl.contents(toy(md5_only=True), data_dir=folder, quiet=True)


def test_fetch_into_a_folder_and_verify_present_files(http_server, tmp_path):
    serve(http_server)
    dest = tmp_path / "dest"
    assert dl.fetch(toy(), mirror=f"{http_server.url}/a", dest=dest, quiet=True) == dest
    assert dl.status(toy(), dest) == (2, len(gz(IMAGES)) + len(gz(LABELS)))
    (dest / "labels.gz").write_bytes(b"junk")
    dl.fetch(toy(), mirror=f"{http_server.url}/a", dest=dest, quiet=True, verify=True)
    assert (dest / "labels.gz").read_bytes() == gz(LABELS)


def test_mirror_precedence(monkeypatch):
    ds = dl.RemoteDataset("x", (dl.RemoteFile("f", md5="0"),), mirrors=("https://official/", "https://m2"))
    monkeypatch.delenv("VAEKIT_MIRROR")
    assert dl.mirrors(ds) == ["https://official", "https://m2"]
    monkeypatch.setenv("VAEKIT_MIRROR", "http://env/")
    assert dl.mirrors(ds) == ["http://env"]
    assert dl.mirrors(ds, "http://a, http://b/") == ["http://a", "http://b"]


def test_cache_dir_follows_vaekit_data(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "elsewhere"))
    assert dl.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("VAEKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert dl.cache_dir() == tmp_path / "xdg" / "vaekit"


def test_a_dataset_without_checksums_cannot_be_declared():
    with pytest.raises(ValueError, match="needs a checksum"):
        dl.RemoteDataset("x", (dl.RemoteFile("f"),), mirrors=())


def test_a_local_folder_can_serve_as_a_mirror(tmp_path, private_cache):
    served = tmp_path / "served"
    served.mkdir()
    (served / "images.gz").write_bytes(gz(IMAGES))
    (served / "labels.gz").write_bytes(gz(LABELS))
    got = dl.contents(toy(), mirror=served.as_uri(), quiet=True)
    assert got == {"images.gz": IMAGES, "labels.gz": LABELS}


# ---------------------------------------------------------------------- hostile or broken mirrors
def bomb(members: int, member_size: int = 16 << 20) -> bytes:
    """A gzip file of ``members`` concatenated members of ``member_size`` zero bytes each:
    ~1000x smaller than what it decompresses to, built without ever holding that much."""
    return gz(bytes(member_size)) * members


def test_a_gzip_bomb_is_stopped_at_the_pinned_size_without_inflating_it(http_server, tmp_path):
    import tracemalloc

    from vaekit.app.data import mnist

    images = mnist.MNIST.files[0]  # the real pin: 47,040,016 bytes of training images
    http_server.routes[f"/m/{images.name}"] = ("ok", bomb(16))  # 256 MiB decompressed, ~260 KB sent
    tracemalloc.start()
    try:
        with pytest.raises(dl.DownloadFailed) as err:
            dl.fetch_file(images, tmp_path, [f"{http_server.url}/m"], quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "decompresses to more than 47040016 bytes" in str(err.value) and "bomb" in str(err.value)
    assert peak < 47040016 // 4  # streamed in bounded pieces: not even the pinned size is held
    assert leftovers(tmp_path) == []


def test_a_gzip_bomb_in_a_data_dir_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "images.gz").write_bytes(bomb(1, 1 << 20))
    (folder / "labels.gz").write_bytes(gz(LABELS))
    with pytest.raises(VaekitError, match=rf"images.gz: decompresses to more than {len(IMAGES)} bytes.* replace it"):
        dl.contents(toy(sized=True), data_dir=folder, quiet=True)


def gz_named(data: bytes, name: str) -> bytes:
    """gzip with a file name in its header (which a gzip reader skips without output)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, fileobj=buffer, mode="wb", mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


JUNK = np.random.default_rng(0).bytes(300_000)  # incompressible, and no gzip


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (("ok", JUNK), "the server announces 300000 bytes, more than the {limit}"),
        # within the download cap (it allows for gzip's overhead), beyond the contents' size
        (("unsized", JUNK[:30_000]), f"holds more than {len(IMAGES)} bytes, the size of the official file"),
        (("unsized", gz_named(IMAGES, "n" * 300_000)), "larger than the {limit} bytes the file can take"),
    ],
    ids=["announced", "plain", "endless-gzip-header"],
)
def test_a_download_larger_than_the_file_can_be_is_stopped(http_server, private_cache, route, message):
    serve(http_server, **{"images.gz": route})
    dataset = toy(sized=True)
    with pytest.raises(VaekitError) as err:
        dl.contents(dataset, mirror=f"{http_server.url}/a", quiet=True)
    limit = dataset.files[0].max_download
    assert len(IMAGES) < 30_000 < limit
    assert message.format(limit=limit) in str(err.value), str(err.value)
    assert leftovers(private_cache / "toy") == []


def test_a_mirror_that_trickles_hits_the_deadline_and_the_next_one_is_tried(
    http_server, private_cache, monkeypatch
):
    # ~25 s of dripping if nothing stopped it; the deadline gives up after 0.3 s
    serve(http_server, prefix="/slow", **{"images.gz": ("drip", gz(IMAGES) + bytes(500))})
    monkeypatch.setenv("VAEKIT_DOWNLOAD_DEADLINE", "0.3")
    with pytest.raises(VaekitError) as err:
        dl.contents(toy(), mirror=f"{http_server.url}/slow", quiet=True)
    message = str(err.value)
    assert f"{http_server.url}/slow/images.gz: gave up after 0.3 s" in message
    assert "VAEKIT_DOWNLOAD_DEADLINE" in message and "\n" not in message
    assert leftovers(private_cache / "toy") == []
    serve(http_server, prefix="/good")
    got = dl.contents(toy(), mirror=f"{http_server.url}/slow,{http_server.url}/good", quiet=True)
    assert got == {"images.gz": IMAGES, "labels.gz": LABELS}


def test_a_stalled_mirror_is_left_at_the_minimum_rate_and_a_slow_steady_one_finishes(
    http_server, private_cache, monkeypatch
):
    """curl's --speed-limit/--speed-time: under 500 bytes/s over any 0.2 s (small thresholds so
    the test is quick; the defaults are 1 KiB/s over 30 s) gives up, with the deadline far away."""
    body = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    dataset = dl.RemoteDataset("toy", (dl.RemoteFile("big.gz", sha256=sha256(body)),), mirrors=(dead_url(),))
    monkeypatch.setenv("VAEKIT_DOWNLOAD_SPEED_LIMIT", "500")
    monkeypatch.setenv("VAEKIT_DOWNLOAD_SPEED_TIME", "0.2")
    # one byte every 0.05 s (20 bytes/s): 60 s for the file, which the 15-minute deadline allowed
    http_server.routes["/stalled/big.gz"] = ("drip", gz(body))
    with pytest.raises(VaekitError) as err:
        dl.contents(dataset, mirror=f"{http_server.url}/stalled", quiet=True)
    message = str(err.value)
    assert f"{http_server.url}/stalled/big.gz: gave up after" in message and "\n" not in message
    assert "in the last 0.2 s" in message and "below the minimum of 500 bytes/s" in message
    assert "VAEKIT_DOWNLOAD_SPEED_LIMIT" in message
    assert leftovers(private_cache / "toy") == []
    # 100 bytes every 0.02 s (~5000 bytes/s): slow, and longer than the window, but steady
    http_server.routes["/steady/big.gz"] = ("steady", gz(body))
    got = dl.contents(dataset, mirror=f"{http_server.url}/stalled,{http_server.url}/steady", quiet=True)
    assert got == {"big.gz": body}
    # 0 turns the minimum off
    monkeypatch.setenv("VAEKIT_DOWNLOAD_SPEED_LIMIT", "0")
    assert dl.minimum_speed() == (0.0, 0.2)


@pytest.mark.parametrize("name, value", [("LIMIT", "fast"), ("LIMIT", "-1"), ("TIME", "0"), ("TIME", "inf")])
def test_a_bad_speed_setting_is_named(monkeypatch, http_server, name, value):
    serve(http_server)
    monkeypatch.setenv(f"VAEKIT_DOWNLOAD_SPEED_{name}", value)
    with pytest.raises(VaekitError, match=f"VAEKIT_DOWNLOAD_SPEED_{name} must be a number of .* got '{value}'"):
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert http_server.requests == []


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf"])
def test_a_bad_deadline_setting_is_named(monkeypatch, value, http_server):
    serve(http_server)
    monkeypatch.setenv("VAEKIT_DOWNLOAD_DEADLINE", value)
    expected = f"VAEKIT_DOWNLOAD_DEADLINE must be a number of seconds above 0, got '{value}'"
    with pytest.raises(VaekitError, match=expected):
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    assert http_server.requests == []


@pytest.mark.skipif(os.name != "posix", reason="umask is POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_cached_files_get_the_umasks_usual_mode(http_server, private_cache, umask):
    serve(http_server)
    old = os.umask(umask)
    try:
        dl.contents(toy(), mirror=f"{http_server.url}/a", quiet=True)
    finally:
        os.umask(old)
    for name in ("images.gz", "labels.gz"):
        assert (private_cache / "toy" / name).stat().st_mode & 0o777 == 0o666 & ~umask


KILLABLE = """
import sys
from vaekit.app.data import download as dl
files = tuple(dl.RemoteFile(name, sha256="0" * 64) for name in ("images.gz", "labels.gz"))
dl.fetch(dl.RemoteDataset("toy", files, mirrors=()), mirror=sys.argv[1], dest=sys.argv[2], quiet=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX file locks and SIGKILL")
def test_part_files_of_killed_downloads_are_removed_live_ones_kept(http_server, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import SRC

    dest = tmp_path / "dest"
    serve(http_server, prefix="/slow", **{"images.gz": ("drip", bytes(100_000))})
    env = dict(os.environ, PYTHONPATH=str(SRC))
    other = subprocess.Popen([sys.executable, "-c", KILLABLE, f"{http_server.url}/slow", str(dest)], env=env,
                             stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # until the other process is mid-download (its .part exists)
            if [f for f in leftovers(dest) if f.endswith(".part")] or other.poll() is not None:
                break
            time.sleep(0.1)
        theirs = [f for f in leftovers(dest) if f.endswith(".part")]
        assert len(theirs) == 1, other.stderr.read() if other.poll() is not None else "no .part yet"
        serve(http_server)
        # a download running elsewhere keeps its .part, while this one proceeds
        dl.fetch(toy(), mirror=f"{http_server.url}/a", dest=dest, quiet=True)
        assert leftovers(dest) == sorted(["images.gz", "labels.gz", *theirs])
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
        other.stderr.close()
    assert theirs[0] in leftovers(dest)  # killed: nothing of it ran to clean up
    dl.fetch(toy(), mirror=dead_url(), dest=dest, quiet=True)  # the next use clears it
    assert leftovers(dest) == ["images.gz", "labels.gz"]
