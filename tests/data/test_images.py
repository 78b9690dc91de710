"""Folders of images made by the tests, including broken ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.app.data import load_data
from vaekit.app.data.lazy import is_lazy
from vaekit.errors import VaekitError


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


@pytest.fixture
def classes(tmp_path):
    """Two class folders of 6x5 greyscale PNGs with known pixels."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name, count in (("cats", 3), ("dogs", 2)):
        for i in range(count):
            array = rng.integers(0, 256, (5, 6), dtype=np.uint8)  # height 5, width 6
            save(tmp_path / "pets" / name / f"{i}.png", array)
            pixels[f"{name}/{i}"] = array
    (tmp_path / "pets" / "cats" / "notes.txt").write_text("not an image: ignored")
    return tmp_path / "pets", pixels


def test_class_folders_become_labels(classes):
    folder, pixels = classes
    data = load_data(str(folder)).train
    assert data.x.shape == (5, 1, 5, 6) and data.x.dtype == torch.float32
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.classes == ["cats", "dogs"]
    expected = torch.from_numpy(pixels["dogs/1"] / 255.0).float()
    torch.testing.assert_close(data.x[4, 0], expected)


def test_flat_folder_has_no_labels_and_colour_is_kept(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    save(tmp_path / "a.png", rgb)
    save(tmp_path / "b.png", np.full((4, 4), 128, np.uint8))
    data = load_data(str(tmp_path)).train
    assert data.labels is None and data.x.shape == (2, 3, 4, 4)  # auto: one colour image
    assert data.x[0, 0].eq(1).all() and data.x[0, 1:].eq(0).all()
    grey = load_data(str(tmp_path), image_mode="grey").train
    assert grey.x.shape == (2, 1, 4, 4)
    torch.testing.assert_close(grey.x[1], torch.full((1, 4, 4), 128 / 255))


def test_resizing_and_mixed_sizes(tmp_path):
    save(tmp_path / "small.png", np.full((4, 4), 255, np.uint8))
    save(tmp_path / "wide.png", np.full((8, 10), 255, np.uint8))
    with pytest.raises(VaekitError, match=r"small.png is 4x4 but wide.png is 10x8 .*--image-size"):
        load_data(str(tmp_path))
    data = load_data(str(tmp_path), image_size=6).train
    assert data.x.shape == (2, 1, 6, 6)
    torch.testing.assert_close(data.x, torch.ones(2, 1, 6, 6))  # resizing keeps a flat image flat


def test_unreadable_images_are_named(tmp_path):
    save(tmp_path / "ok.png", np.zeros((3, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(VaekitError, match=r"2 image\(s\) cannot be read: broken.png \(.*\), empty.jpg"):
        load_data(str(tmp_path))


def test_a_png_whose_damage_pil_reports_as_valueerror_is_named(tmp_path):
    save(tmp_path / "ok.png", np.zeros((3, 3), np.uint8))
    save(tmp_path / "short-header.png", np.zeros((3, 3), np.uint8))
    data = bytearray((tmp_path / "short-header.png").read_bytes())
    data[11] = 5  # the IHDR chunk claims 5 bytes instead of 13: PIL raises ValueError, not OSError
    (tmp_path / "short-header.png").write_bytes(bytes(data))
    with pytest.raises(VaekitError, match=r"1 image\(s\) cannot be read: short-header.png \(Truncated IHDR"):
        load_data(str(tmp_path))


def test_truncated_image_is_named(tmp_path):
    save(tmp_path / "a.png", np.zeros((16, 16), np.uint8))
    save(tmp_path / "b.png", np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8))
    data = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    with pytest.raises(VaekitError, match=r"1 image\(s\) cannot be read: b.png"):
        load_data(str(tmp_path))


def test_folder_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaekitError, match="holds no PNG/JPG/JPEG images"):
        load_data(str(tmp_path / "empty"))
    save(tmp_path / "mixed" / "top.png", np.zeros((2, 2), np.uint8))
    save(tmp_path / "mixed" / "cls" / "in.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(VaekitError, match="mixes images .*top.png.* with class sub-folders .*cls/"):
        load_data(str(tmp_path / "mixed"))


def test_jpeg_and_16_bit_png(tmp_path):
    save(tmp_path / "a.jpg", np.full((8, 8), 200, np.uint8))
    deep = np.full((8, 8), 65535 // 4, np.uint16)
    Image.fromarray(deep).save(tmp_path / "b.png")
    data = load_data(str(tmp_path)).train
    assert abs(float(data.x[0].mean()) - 200 / 255) < 0.01  # JPEG is lossy
    torch.testing.assert_close(data.x[1], torch.full((1, 8, 8), (65535 // 4) / 65535))


def test_streamed_folder_matches_the_in_memory_one(classes, monkeypatch):
    folder, _ = classes
    eager = load_data(str(folder)).train
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "100")
    streamed = load_data(str(folder)).train
    assert is_lazy(streamed.x) and streamed.x.shape == eager.x.shape
    assert torch.equal(streamed.x[torch.tensor([4, 0, 2])], eager.x[[4, 0, 2]])
    assert torch.equal(streamed.labels, eager.labels)
    (folder / "dogs" / "1.png").write_bytes(b"gone bad")
    with pytest.raises(VaekitError, match=r"pets: 1 image\(s\) cannot be read: dogs/1.png \("):
        streamed.x[4]


def truncate(path) -> None:
    """Keep the header, cut the pixels: only decoding finds out."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_streamed_folder_names_every_unreadable_image(tmp_path, monkeypatch):
    from vaekit.app.data import lazy

    rng = np.random.default_rng(0)
    for i in range(10):
        save(tmp_path / "f" / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    broken = [1, 2, 4, 5, 6, 8, 9]
    for i in broken:
        truncate(tmp_path / "f" / f"{i}.png")
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "100")
    monkeypatch.setattr(lazy, "SCAN_ROWS_BYTES", 3 * 16 * 16 * 4)  # three images a chunk
    x = load_data(str(tmp_path / "f")).train.x
    assert is_lazy(x)
    with pytest.raises(VaekitError) as err:
        lazy.value_range(x)  # the scan training runs first reads every image, chunk by chunk
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'f'}: 7 image(s) cannot be read: 1.png (")
    assert [name for name in ("1.png", "2.png", "4.png", "5.png", "6.png") if name in message] == [
        "1.png", "2.png", "4.png", "5.png", "6.png"]
    assert message.endswith(", and 2 more") and "\n" not in message
    with pytest.raises(VaekitError, match=r"2 image\(s\) cannot be read: 8.png \(.*\), 9.png \("):
        x[torch.tensor([9, 0, 8, 9])]  # a batch names its own bad files, each once


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_decompression_bombs_are_refused_naming_the_file(tmp_path, monkeypatch, streamed):
    import warnings

    from PIL import Image

    if streamed:
        monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "100")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's limit, lowered so tiny files are bombs
    save(tmp_path / "a-fine.png", np.zeros((8, 8), np.uint8))  # 64 pixels
    save(tmp_path / "b-warned.png", np.zeros((12, 12), np.uint8))  # 144: PIL only warns up to 2x its limit
    save(tmp_path / "c-bomb.png", np.zeros((20, 20), np.uint8))  # 400: PIL raises DecompressionBombError
    with warnings.catch_warnings(record=True) as caught, pytest.raises(VaekitError) as err:
        warnings.simplefilter("always")
        load_data(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: 2 image(s) cannot be read: b-warned.png (144 pixels, more than the 100")
    assert "c-bomb.png (400 pixels, more than the 100 allowed" in message and "decompression bomb" in message
    assert "a-fine.png" not in message and "\n" not in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_dropping_an_alpha_channel_is_said_once(tmp_path, capsys, monkeypatch, streamed):
    if streamed:
        monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "100")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    save(tmp_path / "a.png", rgba)
    save(tmp_path / "b.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    save(tmp_path / "c.png", rng.integers(0, 256, (4, 4, 4), dtype=np.uint8))
    capsys.readouterr()
    data = load_data(str(tmp_path)).train
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "alpha" in line]
    assert notes == [f"note: {tmp_path}: alpha channel (transparency) dropped from 2 image(s) (a.png and 1 more); "
                     "their pixels keep the colour stored under it"]
    expected = torch.from_numpy(rgba[..., :3].transpose(2, 0, 1) / 255.0).float()
    torch.testing.assert_close(data.x[0], expected)
    load_data(str(tmp_path), quiet=True)
    assert "alpha" not in capsys.readouterr().err
