"""The public Python API: names exist, are what they say, and survive import order."""

from __future__ import annotations

import subprocess
import sys

from conftest import SRC


def test_api_names_after_submodules_were_imported():
    """``vaekit.train`` and ``vaekit.evaluate`` are plain functions (the app's ``train`` and
    the library's ``evaluate``), not modules: importing the modules that define them first
    changes nothing, and there is no ``vaekit.train`` module to import."""
    code = (
        "import inspect\n"
        "import vaekit.training, vaekit.evaluation, vaekit.rundir, vaekit.app.runs\n"
        "import vaekit\n"
        "assert inspect.isfunction(vaekit.train) and inspect.isfunction(vaekit.evaluate)\n"
        "assert vaekit.train is vaekit.app.runs.train and vaekit.train.__name__ == 'train'\n"
        "assert vaekit.evaluate is vaekit.evaluation.evaluate\n"
        "assert vaekit.fit is vaekit.training.fit\n"
        "for module in ('vaekit.train', 'vaekit.evaluate', 'vaekit.runs'):\n"
        "    try:\n"
        "        __import__(module)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(module + ' is still a module')\n"
        "for name in ('VAE', 'AE', 'Config', 'load', 'elbo', 'load_data', 'build_model', 'fit', 'History',\n"
        "             'RunDirectory', 'Batch'):\n"
        "    assert getattr(vaekit, name) is not None\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "ok", done.stderr


def test_train_and_evaluate_are_callable_in_a_fresh_process(tmp_path):
    """vaekit.train from a script, twice (the second over the first), then load and evaluate;
    train leaves the script's process-wide state as it was (matplotlib's backend, torch's
    thread count, the global generators), figures included."""
    code = (
        "import random, numpy as np, matplotlib, vaekit, torch\n"
        "import sklearn.datasets  # importing it draws from Python's generator: not vaekit's doing\n"
        "torch.set_num_threads(2)\n"
        "state = lambda: (matplotlib.get_backend(), torch.get_num_threads(), torch.get_rng_state(),\n"
        "                 np.random.get_state()[1].tolist(), random.getstate())\n"
        "before = state()\n"
        "config = vaekit.Config(data='digits', hidden=[8], epochs=1, binarize='dynamic', threads=1)\n"
        f"run = vaekit.train(config, {str(tmp_path / 'r')!r}, quiet=True)\n"
        "after = state()\n"
        "assert after[:2] == before[:2] and torch.equal(after[2], before[2]) and after[3:] == before[3:]\n"
        "run = vaekit.train(config, run, quiet=True, figures=False, overwrite=True)\n"
        "model = vaekit.load(run)\n"
        "x = torch.bernoulli(vaekit.load_data('digits').train.x[:20])\n"
        "print(sorted(vaekit.evaluate(model, x, importance_samples=10)))\n"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "elbo" in done.stdout
    assert not (tmp_path / "r" / "latent.png").exists()  # the second run replaced the first, without figures


def test_api_functions_of_the_app_show_their_signatures_and_pickle():
    import inspect
    import pickle

    import vaekit

    train_params = inspect.signature(vaekit.train).parameters
    assert list(train_params)[:2] == ["config", "out"] and "overwrite" in train_params
    for function in (vaekit.train, vaekit.load):
        assert pickle.loads(pickle.dumps(function)) is function
        assert inspect.isfunction(function)


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    import vaekit

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vaekit.nope  # noqa: B018


def test_importing_vaekit_leaves_the_openmp_environment_alone():
    code = "import os, vaekit; print(os.environ.get('OMP_WAIT_POLICY', '-'))"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "-", done.stderr


def test_the_python_requirement_matches_what_the_code_uses():
    # vaekit reads TOML with tomllib (Python 3.11+): the package metadata says so
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)
