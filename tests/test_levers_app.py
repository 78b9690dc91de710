"""The CPU hour's levers as settings (issue 26): ``compile`` and ``precision`` decided for the
machine, said in one line, recorded, and changeable when a run resumes elsewhere."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from vaekit import devices
from vaekit.app import runs


def test_compile_auto_is_said_and_off_for_fp32(tmp_path):
    result = run_cli("train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                     "--compile", "auto", "--no-figures", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compile auto: off (it pays with bf16 only, this run is fp32)" in result.stdout + result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] == "auto"


def test_compile_on_wraps_the_objective_and_off_does_not(tmp_path, monkeypatch):
    wrapped = []

    class Recording(devices.CompiledObjective):
        def __init__(self, objective):  # no real compile: the library's tests cover it
            wrapped.append(objective)
            self.eager, self.compiled, self.failed, self.warm = objective, objective, None, True

    monkeypatch.setattr(runs, "CompiledObjective", Recording)
    for setting, expected in (("off", 0), ("on", 1)):
        result = run_cli("train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                         "--compile", setting, "--no-figures", "--out", tmp_path / setting)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(wrapped) == expected


def test_a_bad_compile_setting_is_one_line(tmp_path):
    result = run_cli("train", "--data", "digits", "--compile", "yes", "--out", tmp_path / "run")
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in said
    assert "compile" in said and "auto" in said


@pytest.mark.parametrize("setting,features,expected", [
    ("auto", ["amx_bf16"], True), ("auto", ["avx512_bf16"], True), ("auto", [], False), ("on", [], True),
    ("off", ["amx_bf16"], False)])
def test_resolve_compile_follows_the_precision_it_resolved(setting, features, expected, monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: features)
    monkeypatch.setattr(devices, "cpu_compiler", lambda: "g++")
    precision = runs.resolve_precision("auto", "cpu")
    assert precision == ("bf16" if features else "fp32")
    assert runs.resolve_compile(setting, "cpu", precision) is expected


def test_a_bf16_run_resumes_in_fp32_from_the_cli(tmp_path, monkeypatch):
    # started where the CPU has bf16 units (auto: bf16), continued where it has none (auto: fp32)
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["avx512_bf16"])
    out = tmp_path / "run"
    first = run_cli("train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                    "--precision", "auto", "--no-figures", "--out", out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: [])
    second = run_cli("train", "--resume", out, "--epochs", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["precision"] == "fp32"
    assert [s["precision"] for s in info["trained_with"]] == ["bf16", "fp32"]
