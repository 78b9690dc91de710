"""An interrupted evaluation goes on where it stopped: the library's resume (``scored`` and
``on_batch`` of per_example/evaluate) gives the uninterrupted numbers bit for bit, and
``vaekit evaluate`` keeps finished batches in evaluation-SPLIT.partial.safetensors, resumes
from them only when weights, data and settings match, and starts over (with a note) on
anything else: other settings, a damaged or foreign file, ``--no-resume``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_vae
from vaekit import evaluation as ev
from vaekit.app import partial
from vaekit.app.cli import main
from vaekit.errors import VaekitError


def _model_and_data():
    torch.manual_seed(0)
    model = make_vae((12,), hidden=[16], latent_dim=3)
    x = torch.bernoulli(torch.full((23, 12), 0.4))
    return model, x


@pytest.mark.parametrize("gap", [False, True])
def test_resumed_scores_are_the_uninterrupted_ones_bit_for_bit(gap):
    model, x = _model_and_data()
    kwargs = dict(importance_samples=16, batch_size=5, seed=7, gap_decomposition=gap, local_steps=3)
    whole = ev.evaluate(model, x, **kwargs)
    prefixes = []
    ev.evaluate(model, x, **kwargs, on_batch=lambda rows, s: prefixes.append(
        (rows, {k: v[:rows].clone() for k, v in s.items()})))
    assert [rows for rows, _ in prefixes] == [5, 10, 15, 20, 23]
    for rows, scored in prefixes[:-1]:
        progress = []
        resumed = ev.evaluate(model, x, **kwargs, scored=scored, on_progress=progress.append)
        assert resumed == whole, rows
        assert sum(progress) == len(x) * (2 if gap else 1)  # skipped batches count as done
    # Scores made with other settings are not spliced in.
    with pytest.raises(VaekitError, match="not the same settings"):
        ev.evaluate(model, x, **{**kwargs, "gap_decomposition": not gap}, scored=prefixes[1][1])


def test_scores_to_resume_from_must_be_whole_batches_of_one_length():
    model, x = _model_and_data()
    scores = ev.per_example(model, x, importance_samples=4, batch_size=5)
    with pytest.raises(VaekitError, match="not whole batches of 5"):
        ev.per_example(model, x, importance_samples=4, batch_size=5, scored={k: v[:7] for k, v in scores.items()})
    with pytest.raises(VaekitError, match="of one length"):
        ev.per_example(model, x, importance_samples=4, batch_size=5,
                       scored={"elbo": scores["elbo"][:5], "kl": scores["kl"][:10]})


def _evaluate(run, *extra):
    return main(["evaluate", str(run), "--importance-samples", "40", "--batch-size", "50", "--json", *extra])


@pytest.fixture
def run(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(partial, "SAVE_SECONDS", 0.0)  # keep every finished batch
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def _interrupt_after(monkeypatch, batches: int):
    keep = partial.PartialScores.on_batch
    seen = []

    def on_batch(self, rows, scores):
        keep(self, rows, scores)
        seen.append(rows)
        if len(seen) == batches:
            raise KeyboardInterrupt

    monkeypatch.setattr(partial.PartialScores, "on_batch", on_batch)
    return lambda: monkeypatch.setattr(partial.PartialScores, "on_batch", keep)


def test_cli_evaluate_goes_on_after_an_interruption_with_the_same_numbers(run, monkeypatch, capsys):
    assert _evaluate(run, "-q", "--no-save") == 0
    whole = json.loads(capsys.readouterr().out)
    restore = _interrupt_after(monkeypatch, 2)
    assert _evaluate(run) == 130
    err = capsys.readouterr().err
    kept = run / "evaluation-validation.partial.safetensors"
    assert "the scores of 100 of" in err and str(kept) in err and "same command goes on" in err
    assert kept.is_file() and not (run / "evaluation-validation.json").exists()
    restore()
    assert _evaluate(run) == 0
    out, err = capsys.readouterr()
    assert "resuming the evaluation after 100 of" in err
    assert json.loads(out) == whole
    assert not kept.exists()  # the stored result holds it now
    assert json.loads((run / "evaluation-validation.json").read_text()) == whole


@pytest.mark.parametrize("change, note", [
    (["--seed", "1"], "with other seed than"),
    (["--importance-samples", "30"], "with other importance_samples"),
    (["--no-resume"], None),
])
def test_cli_evaluate_starts_over_when_the_kept_scores_do_not_fit(run, monkeypatch, capsys, change, note):
    restore = _interrupt_after(monkeypatch, 1)
    assert _evaluate(run, "-q") == 130
    restore()
    capsys.readouterr()
    assert _evaluate(run, *change) == 0
    out, err = capsys.readouterr()
    assert "resuming" not in err
    if note is not None:
        assert f"starting over: evaluation-validation.partial.safetensors was scored {note}" in err
    assert not (run / "evaluation-validation.partial.safetensors").exists()  # the result replaced it
    assert _evaluate(run, "-q", "--no-save", *[a for a in change if a != "--no-resume"]) == 0
    assert json.loads(out) == json.loads(capsys.readouterr().out)


def test_cli_evaluate_sets_aside_a_damaged_or_foreign_partial_file(run, monkeypatch, capsys):
    restore = _interrupt_after(monkeypatch, 1)
    assert _evaluate(run, "-q") == 130
    restore()
    kept = run / "evaluation-validation.partial.safetensors"
    data = bytearray(kept.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the scores
    kept.write_bytes(bytes(data))
    assert _evaluate(run) == 0
    out, err = capsys.readouterr()
    assert "starting over:" in err and "checksum" in err and "Traceback" not in err
    assert _evaluate(run, "-q", "--no-save") == 0
    assert json.loads(out) == json.loads(capsys.readouterr().out)
    # Tensors of the wrong shape (someone else's file under that name) are not read as scores.
    from safetensors.torch import save_file

    save_file({"elbo": torch.zeros(3, 3, dtype=torch.float64)}, str(kept))
    assert _evaluate(run) == 0
    assert "starting over:" in capsys.readouterr().err


def test_overwriting_a_run_drops_its_partial_evaluations(run):
    from vaekit.rundir import _own

    assert _own("evaluation-test-first1000.partial.safetensors")
