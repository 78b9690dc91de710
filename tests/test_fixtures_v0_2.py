"""Run directories written by vaekit 0.2.0 (tests/fixtures/*-v0.2) load, evaluate and resume
as 0.2 resumed them, and their config.json reads back into the same settings."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import vaekit
from conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["gauss-v0.2", "hvae-v0.2"]


@pytest.mark.parametrize("name", NAMES)
def test_the_config_json_of_vaekit_0_2_reads_back_unchanged(name):
    from vaekit.app.runs import load_config

    stored = json.loads((FIXTURES / name / "config.json").read_text())
    from vaekit.app.config import BEFORE_THE_KEY

    config = load_config(FIXTURES / name).to_dict()
    assert {k: config[k] for k in stored} == stored  # every key known, every value as written
    added = {k: v for k, v in config.items() if k not in stored}  # settings newer than 0.2: as 0.2 trained
    assert {k: v for k, v in added.items() if k in BEFORE_THE_KEY} == {k: BEFORE_THE_KEY[k] for k in added
                                                                       if k in BEFORE_THE_KEY}
    assert {"prior", "posterior"} <= set(added) and (added["prior"], added["posterior"]) == ("standard", "diagonal")


@pytest.mark.parametrize("name", NAMES)
def test_run_directories_of_vaekit_0_2_load_evaluate_and_resume(tmp_path, name):
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    expected = json.loads((FIXTURES / "expected-v0.2.json").read_text())[name]
    model = vaekit.load(run)
    assert model.event_shape == (1, 8, 8)
    done = run_cli("evaluate", run, "--importance-samples", "5", "--json", "-q", "--no-save")
    assert done.returncode == 0, done.stderr
    assert math.isfinite(json.loads(done.stdout)["log_likelihood"])
    done = run_cli("train", "--resume", run, "--epochs", str(expected["resume_epochs"]), "--threads", "1",
                   "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected["metrics_after_resume"])
    for got, want in zip(rows, expected["metrics_after_resume"], strict=True):
        for key, value in want.items():
            # bit for bit on the CPU that wrote them; 1e-5 allows another CPU's rounding while a wrong
            # random, optimiser or schedule state would move these by far more
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
