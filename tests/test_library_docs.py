"""docs/library.md's examples run as written (as tests/test_readme.py does for the README);
blocks that load MNIST are skipped where its files are absent (set VAEKIT_TEST_MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import MNIST_DIR, needs_mnist

PAGE = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def _run(block: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(PAGE), "exec"), {"__name__": "__library_docs__"})


def test_the_page_has_its_examples():
    found = blocks()
    assert len(found) == 3
    assert sum('load_data("mnist"' in b for b in found) == 1


@pytest.mark.parametrize("index", [i for i, b in enumerate(blocks()) if 'load_data("mnist"' not in b])
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    _run(blocks()[index], tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert out.strip(), "each example prints what it shows"


@needs_mnist
def test_mnist_example_runs(tmp_path, monkeypatch, capsys):
    """The MNIST block as written: load_data("mnist") reads the cache, here a folder whose
    mnist/ is the test files (no network)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist").symlink_to(MNIST_DIR, target_is_directory=True)
    monkeypatch.setenv("VAEKIT_DATA", str(cache))
    [block] = [b for b in blocks() if 'load_data("mnist"' in b]
    _run(block, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "Dataset('mnist', shape=[60000, 1, 28, 28], float32, labels 0..9)" in out
    assert "torch.Size([10000, 1, 28, 28])" in out
