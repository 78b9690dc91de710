"""`vaekit data list|fetch` and the data options of `vaekit train`, as a user runs them."""

from __future__ import annotations

import os

from conftest import run_cli

from .helpers import cli, dead_url


def test_list_shows_datasets_cache_state_and_folder(private_cache, capsys):
    status, out, err = cli(capsys, "data", "list")
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert {"digits", "mnist", "fashion-mnist", "kmnist"} <= set(rows)
    assert rows["mnist"].split()[1] == "no" and "sha256" in rows["mnist"]
    assert "md5" in rows["fashion-mnist"]
    assert str(private_cache) in out
    (private_cache / "mnist").mkdir(parents=True)
    (private_cache / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x" * 2000)
    rows = {line.split()[0]: line for line in cli(capsys, "data", "list")[1].splitlines()[1:]}
    assert "partly (1/4 files)" in rows["mnist"] and "2.0 KB" in rows["mnist"]


def test_fetch_unknown_names(private_cache, capsys):
    status, _, err = cli(capsys, "data", "fetch", "emnist-letters")
    assert status == 2
    assert "unknown dataset 'emnist-letters'" in err and "fashion-mnist" in err
    assert "built in" in cli(capsys, "data", "fetch", "digits")[2]
    assert "mirror must be http" in cli(capsys, "data", "fetch", "mnist", "--mirror", "ftp://x")[2]


def test_fetch_offline_is_one_clear_message(private_cache):  # a real process: no traceback
    url = dead_url()
    result = run_cli("data", "fetch", "mnist", "--mirror", url)
    assert result.returncode == 2
    assert "\nerror: cannot get the mnist files train-images-idx3-ubyte.gz" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert error == result.stderr.rstrip("\n").splitlines()[-1]  # the message is that one line
    assert f"{url}/train-images-idx3-ubyte.gz: unreachable" in error and str(private_cache / "mnist") in error
    assert os.listdir(private_cache / "mnist") == []


def test_train_offline_and_with_an_incomplete_data_dir(tmp_path, capsys):
    status, _, err = cli(capsys, "train", "--data", "kmnist", "--epochs", "1", "--out", tmp_path / "run")
    assert status == 2 and "cannot get the kmnist files" in err
    assert not (tmp_path / "run").exists()
    status, _, err = cli(capsys, "train", "--data", "fashion-mnist", "--data-dir", tmp_path,
                         "--out", tmp_path / "r")
    assert status == 2
    assert "lacks the fashion-mnist file(s) train-images-idx3-ubyte.gz" in err
