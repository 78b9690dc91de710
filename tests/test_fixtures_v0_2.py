"""Run directories written by vaekit 0.2.0 (tests/fixtures/*-v0.2) load, evaluate and resume
as 0.2 resumed them, and their config.json reads back into the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import old_run_resumes_as_recorded

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
    old_run_resumes_as_recorded(tmp_path, name, "expected-v0.2.json")
