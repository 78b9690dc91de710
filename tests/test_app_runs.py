"""The app's runs end to end: devices and precision from the command line, a run trained
on a GPU, run directories written by vaekit 0.1, and loading a run trained from Python
with vaekit.load. (The library's own side of these: test_library.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import vaekit
from conftest import make_vae, old_run_resumes_as_recorded, run_cli


def test_device_cpu_and_bf16_train_and_evaluate_end_to_end(tmp_path):
    out = tmp_path / "bf16"
    done = run_cli("train", "--data", "digits", "--binarize", "dynamic", "--hidden", "32", "--epochs", "3",
                   "--device", "cpu", "--precision", "bf16", "--out", out, "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train_elbo"]) and math.isfinite(r["validation_elbo"]) for r in rows)
    assert rows[-1]["train_elbo"] > rows[0]["train_elbo"]  # it learns
    done = run_cli("evaluate", out, "--device", "cpu", "--importance-samples", "20", "--json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert math.isfinite(result["elbo"]) and result["log_likelihood"] > result["elbo"] - 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_clear_line(tmp_path):
    done = run_cli("train", "--data", "digits", "--epochs", "1", "--device", "cuda", "--out", tmp_path / "r")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "CUDA" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_run_trained_on_the_gpu_loads_and_resumes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    done = run_cli("train", "--data", "digits", "--binarize", "dynamic", "--epochs", "2", "--device", "cuda",
                   "--out", out, "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    model = vaekit.load(out, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    done = run_cli("train", "--resume", out, "--epochs", "3", "--device", "cpu", "-q", "--no-figures")
    assert done.returncode == 0, done.stderr


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["vae-v0.1", "cvae-v0.1"])
def test_run_directories_of_vaekit_0_1_load_evaluate_and_resume(tmp_path, name):
    old_run_resumes_as_recorded(tmp_path, name, "expected.json", validation_rel=1e-6)


def test_load_a_run_trained_from_python_into_ones_own_module(tmp_path, digits):
    torch.manual_seed(0)
    model = make_vae((1, 8, 8), [16], 2)
    vaekit.fit(model, digits[0][:200], epochs=1, batch_size=50, device="cpu", out=tmp_path / "run")
    with pytest.raises(vaekit.VaekitError, match="model="):
        vaekit.load(tmp_path / "run")  # no config: the run's model was defined in Python
    loaded = vaekit.load(tmp_path / "run", model=make_vae((1, 8, 8), [16], 2))
    assert not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_vaekit_train_colours_the_latent_figure_of_an_unconditional_model(monkeypatch, tmp_path):
    from test_plots_variants import latent_colours
    from vaekit.app.config import Config
    from vaekit.app.runs import train

    config = Config(data="digits", hidden=[16], latent_dim=2, epochs=1, batch_size=256, binarize="dynamic")
    colours, legend = latent_colours(monkeypatch, lambda: train(config, tmp_path / "run", quiet=True))
    assert len(colours) == 10 and legend == [str(c) for c in range(10)]


# ---------------------------------------------------------------------- precision = "auto"
@pytest.mark.parametrize(("capabilities", "expected"), [
    ({"amx_bf16": True, "avx512_bf16": True, "avx512_f": True}, ("bf16", ["amx_bf16", "avx512_bf16"])),
    ({"amx_bf16": False, "avx512_bf16": True}, ("bf16", ["avx512_bf16"])),
    ({"amx_bf16": False, "avx512_bf16": False, "avx512_f": True, "avx2": True}, ("fp32", [])),  # AVX-512 alone
])
def test_auto_precision_follows_torchs_cpu_capabilities(monkeypatch, capabilities, expected):
    from vaekit import devices

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    precision, why = devices.auto_precision(torch.device("cpu"))
    assert (precision, devices.cpu_bf16_features()) == expected
    assert all(name in why for name in expected[1])


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu avx2 avx512f avx512_bf16 amx_tile", "bf16"),
    ("fpu avx2 avx512f avx512bw", "fp32"),
])
def test_auto_precision_falls_back_to_cpuinfo_flags(monkeypatch, tmp_path, flags, expected):
    from vaekit import devices

    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # an older torch
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(devices, "CPUINFO", str(cpuinfo))
    assert devices.auto_precision(torch.device("cpu"))[0] == expected
    monkeypatch.setattr(devices, "CPUINFO", str(tmp_path / "missing"))  # no /proc (macOS, Windows)
    assert devices.auto_precision(torch.device("cpu"))[0] == "fp32"


def test_auto_precision_keeps_fp32_off_the_cpu(monkeypatch):
    from vaekit import devices

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert devices.auto_precision(torch.device("cuda"))[0] == "fp32"  # measured on CPUs only
    assert devices.auto_precision(torch.device("mps"))[0] == "fp32"


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_precision_auto_trains_at_what_the_cpu_supports_and_says_so(monkeypatch, tmp_path, capsys,
                                                                     has_bf16, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": has_bf16}, raising=False)
    config = vaekit.Config(data="digits", binarize="dynamic", hidden=[16], latent_dim=2, epochs=1,
                           device="cpu", precision="auto")
    run = vaekit.train(config, tmp_path / "run", figures=False)
    assert json.loads((run / "config.json").read_text())["precision"] == "auto"  # decided again on a resume
    assert json.loads((run / "run.json").read_text())["precision"] == expected
    assert f"precision auto: {expected}" in capsys.readouterr().err


def test_explicit_precisions_mean_what_they_meant(monkeypatch):
    from vaekit.app.runs import resolve_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert vaekit.Config().precision == "fp32"
