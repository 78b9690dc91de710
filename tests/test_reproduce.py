"""benchmarks/reproduce.py end to end on real MNIST, with budgets small enough for CI: the
record, the figures, resuming a session cut short by --hours, redrawing from a record, and
one-line errors. Skipped where MNIST is absent."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from conftest import MNIST_DIR, SRC, needs_mnist, run_in_process

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
RECORDS = SRC / "vaekit" / "app" / "presets" / "records"
SMALL = ("--k", "20", "--n-test", "200", "--curve-k", "10", "--curve-n", "100", "--threads", "1", "--quiet")


def reproduce(*args: str):
    """``python benchmarks/reproduce.py ARGS``, run in this process (conftest.run_in_process):
    a fresh copy of the script each time, with its folder first on the module path as a
    script has it."""
    argv = [str(SCRIPT), *map(str, args)]

    def script() -> None:
        saved = sys.argv, list(sys.path)
        sys.argv, sys.path[:0] = argv, [str(SCRIPT.parent)]
        try:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = saved

    return run_in_process(script, argv)


def published() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in RECORDS.glob("*.json")}


@needs_mnist
def test_a_session_cut_short_by_hours_resumes_and_is_evaluated_again(tmp_path):
    before = published()
    out = tmp_path / "pe"
    # pytorch-examples: 469 steps per epoch; --hours stops after the epoch in which the time passed
    first = reproduce("pytorch-examples", "--steps", "1000", "--hours", "1e-9", "--out", out,
                      "--data-dir", MNIST_DIR, *SMALL)
    assert first.returncode == 0, first.stderr
    assert "budget not reached" in first.stdout and "run it again to go on" in first.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["training_done"] is False and record["budget_reached"] is False
    assert 0 < record["steps"] < 1000
    assert record["final"]["steps"] == record["steps"]
    assert record["final"]["importance_samples"] == 20 and record["final"]["n"] == 200
    assert record["measure"] == "loss" and record["measured"] == pytest.approx(-record["final"]["elbo"])
    assert record["published"] == pytest.approx(105.6)
    assert (out / "nll_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "validation_vs_examples.png").is_file()

    second = reproduce("pytorch-examples", "--steps", "1000", "--out", out, "--data-dir", MNIST_DIR, *SMALL)
    assert second.returncode == 0, second.stderr
    resumed = json.loads((out / "record.json").read_text())
    assert resumed["training_done"] is True and resumed["budget_reached"] is True
    assert resumed["steps"] == 1000 and resumed["final"]["steps"] == 1000  # evaluated again where it reached
    assert len(resumed["sessions"]) == 2
    # a finished record is not trained or evaluated again
    third = reproduce("pytorch-examples", "--steps", "1000", "--out", out, "--data-dir", MNIST_DIR, *SMALL)
    assert third.returncode == 0, third.stderr
    again = json.loads((out / "record.json").read_text())
    assert len(again["sessions"]) == 2 and again["final"] == resumed["final"]
    # a step budget is not the preset's protocol: nothing goes into the package
    assert published() == before

    for figure in ("nll_vs_time.png", "validation_vs_examples.png"):
        (out / figure).unlink()
    redrawn = reproduce("pytorch-examples", "--redraw", "--out", out)
    assert redrawn.returncode == 0, redrawn.stderr
    assert (out / "nll_vs_time.png").is_file() and (out / "validation_vs_examples.png").is_file()
    assert json.loads((out / "record.json").read_text()) == again  # redrawing reads, never writes


@needs_mnist
def test_an_interrupted_final_evaluation_goes_on_from_its_finished_batches(tmp_path, monkeypatch):
    from vaekit import evaluation
    from vaekit.app import partial

    monkeypatch.setattr(evaluation, "VALUES", 2000)  # K = 20: batches of 100 of the 200 test images
    monkeypatch.setattr(partial, "SAVE_SECONDS", 0.0)
    keep = partial.PartialScores.on_batch

    def interrupted(self, rows, scores):
        keep(self, rows, scores)
        raise KeyboardInterrupt

    monkeypatch.setattr(partial.PartialScores, "on_batch", interrupted)
    out = tmp_path / "pe"
    args = ("pytorch-examples", "--steps", "20", "--out", out, "--data-dir", MNIST_DIR, *SMALL)
    first = reproduce(*args)
    assert first.returncode != 0 and "Traceback" not in first.stderr
    assert "evaluation interrupted: the scores of 100 of 200 examples are kept" in first.stderr
    assert (out / "final.partial.safetensors").is_file()
    assert "final" not in json.loads((out / "record.json").read_text())

    monkeypatch.setattr(partial.PartialScores, "on_batch", keep)
    second = reproduce(*args)
    assert second.returncode == 0, second.stderr
    assert "resuming the evaluation after 100 of 200 examples" in second.stderr
    assert not (out / "final.partial.safetensors").exists()
    record = json.loads((out / "record.json").read_text())
    resumed = record.pop("final")
    assert resumed["resumed_after"] == 100 and resumed["n"] == 200
    # the same numbers as an evaluation that was never interrupted
    (out / "record.json").write_text(json.dumps(record))
    assert reproduce(*args).returncode == 0
    fresh = json.loads((out / "record.json").read_text())["final"]
    assert "resumed_after" not in fresh
    timing = ("seconds", "others_cpu", "resumed_after")
    assert {k: v for k, v in fresh.items() if k not in timing} == {k: v for k, v in resumed.items() if k not in timing}


@needs_mnist
def test_set_changes_a_setting_records_it_and_keeps_its_own_folder(tmp_path):
    before = published()
    out = tmp_path / "small"
    done = reproduce("pytorch-examples", "--steps", "20", "--set", "latent_dim=3", "--set", "hidden=[64]",
                     "--out", out, "--data-dir", MNIST_DIR, *SMALL)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["settings_changed"] == {"latent_dim": 3, "hidden": [64]}
    assert record["config"]["latent_dim"] == 3 and record["config"]["hidden"] == [64]
    assert json.loads((out / "run" / "config.json").read_text())["latent_dim"] == 3
    assert record["published"] is None  # the preset's published number is not this variant's
    assert "pytorch-examples latent_dim=3 hidden=[64]" in done.stdout
    # the folder holds that variant: another --set (or none) there is refused in one line
    other = reproduce("pytorch-examples", "--steps", "20", "--out", out, "--data-dir", MNIST_DIR, *SMALL)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "latent_dim=3" in other.stderr.strip().splitlines()[-1]
    assert published() == before


def test_redraw_uses_the_package_record_when_no_run_is_here(tmp_path):
    name = next(p.stem for p in sorted(RECORDS.glob("*.json")))
    result = reproduce(name, "--redraw", "--out", tmp_path / "figures")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "figures" / "nll_vs_time.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, words", [
    (("no-such-preset", "--quick"), "no-such-preset"),
    (("burda2016-iwae-2l-k50", "--redraw", "--out", "{tmp}/none"), "no finished record"),
    (("pytorch-examples", "--hours", "0"), "--hours must be positive"),
    (("pytorch-examples", "--set", "latent_dim"), "KEY=VALUE"),
    (("pytorch-examples", "--set", "no_such_setting=1", "--out", "{tmp}/x"), "unknown setting 'no_such_setting'"),
    (("pytorch-examples", "--set", "latent_dim=-1", "--out", "{tmp}/x"), "latent_dim"),
])
def test_bad_input_is_one_line_without_a_traceback(tmp_path, args, words):
    result = reproduce(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert words in result.stderr.strip().splitlines()[-1]  # the message is one line (argparse's usage comes first)
