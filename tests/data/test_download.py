"""Downloads end to end against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest

from vaekit.app.data import download as dl
from vaekit.errors import VaekitError

from .helpers import dead_url, gz, idx_bytes, md5, sha256

IMAGES = idx_bytes(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
LABELS = idx_bytes(np.array([4, 7], dtype=np.uint8))


def toy(md5_only: bool = False) -> dl.RemoteDataset:
    def remote(name, body):
        if md5_only:
            return dl.RemoteFile(name, md5=md5(gz(body)))
        return dl.RemoteFile(name, sha256=sha256(body))

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


def test_stale_partial_files_are_cleaned_young_ones_kept(tmp_path, http_server):
    dest = tmp_path / "dest"
    dest.mkdir()
    old, young = dest / ".images.gz.abc.part", dest / ".labels.gz.def.part"
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    serve(http_server)
    dl.fetch(toy(), mirror=f"{http_server.url}/a", dest=dest, quiet=True)
    assert not old.exists() and young.exists()


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
