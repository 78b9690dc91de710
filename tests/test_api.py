"""The public Python API: names exist, are what they say, and survive import order."""

from __future__ import annotations

import subprocess
import sys

from conftest import SRC


def test_api_names_after_submodules_were_imported():
    code = (
        "import vaekit.train, vaekit.evaluate, vaekit.runs\n"
        "import vaekit\n"
        "assert vaekit.train.__name__ == 'train' and callable(vaekit.train)\n"
        "assert vaekit.evaluate.__name__ == 'evaluate' and callable(vaekit.evaluate)\n"
        "from vaekit.train import run_epoch\n"
        "for name in ('VAE', 'AE', 'Config', 'load', 'elbo', 'load_data', 'build_model'):\n"
        "    assert getattr(vaekit, name) is not None\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "ok", done.stderr


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    import vaekit

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vaekit.nope  # noqa: B018
