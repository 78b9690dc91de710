"""What a new user runs into with their own tables and folders (issue 13): labels numbered as
the run numbered them, new rows scored without labels, outputs that point back at their source,
a run's data found again from any folder, progress off a terminal, figures for tables, and the
everyday options (--weights, --overwrite, --threads, --version, defaults in --help)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from data.helpers import cli

NAMES = {0: "barolo", 1: "grignolino", 2: "barbera"}  # sorted: barbera 0, barolo 1, grignolino 2


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """wine.csv (178 rows, 13 features, cultivar names), barolo.csv (its barolo rows only) and
    nolabel.csv (every row, no cultivar column)."""
    from sklearn.datasets import load_wine

    root = tmp_path_factory.mktemp("wine")
    frame = load_wine(as_frame=True).frame
    frame["cultivar"] = frame.pop("target").map(NAMES)
    frame.to_csv(root / "wine.csv", index=False)
    frame[frame.cultivar == "barolo"].to_csv(root / "barolo.csv", index=False)
    frame.drop(columns="cultivar").to_csv(root / "nolabel.csv", index=False)
    return root


def train(capsys, root, name, *args):
    status, out, err = cli(capsys, "train", "--data", root / "wine.csv", "--label-column", "cultivar",
                           "--standardize", "--likelihood", "gaussian", "--hidden", "16", "--epochs", "3",
                           "--out", root / name, *args)
    assert status == 0, err
    return root / name, out, err


@pytest.fixture(scope="module")
def runs(wine):
    """A CVAE and a VAE trained (quietly) on wine.csv."""
    from vaekit.app.config import Config
    from vaekit.app.runs import train as run_training

    made = {}
    for model in ("cvae", "vae"):
        config = Config(data=str(wine / "wine.csv"), label_column="cultivar", standardize=True,
                        likelihood="gaussian", hidden=[16], epochs=3, model=model)
        made[model] = run_training(config, wine / f"run-{model}", quiet=True, figures=model == "vae")
    return made


# ---------------------------------------------------------------------- 1. class names
def test_a_file_holding_some_classes_keeps_the_runs_numbering(wine, runs, capsys):
    from vaekit.app.data import select_split
    from vaekit.app.runs import load_config

    run = runs["cvae"]
    record = json.loads((run / "data.json").read_text())
    assert record["classes"] == ["barbera", "barolo", "grignolino"]
    config = load_config(run)
    subset = select_split(config, "all", str(wine / "barolo.csv"), run_dir=run)
    assert subset.labels.unique().tolist() == [1] and subset.classes == record["classes"]
    # the conditional model sees the same (x, y) for a barolo row whichever file it comes from
    assert cli(capsys, "encode", run, "--data", wine / "wine.csv", "-o", wine / "all.csv")[0] == 0
    assert cli(capsys, "encode", run, "--data", wine / "barolo.csv", "-o", wine / "some.csv")[0] == 0
    everything, some = read_csv(wine / "all.csv"), read_csv(wine / "some.csv")
    barolo = [r for r in everything if r["label_name"] == "barolo"]
    assert len(barolo) == len(some) == 59
    assert [r["mu_1"] for r in barolo] == [r["mu_1"] for r in some]
    assert {r["label"] for r in some} == {"1"} and {r["label_name"] for r in some} == {"barolo"}


def test_a_label_the_run_does_not_know(wine, runs, capsys):
    frame = pd.read_csv(wine / "wine.csv")
    frame.loc[3, "cultivar"] = "zinfandel"
    frame.to_csv(wine / "unknown.csv", index=False)
    status, _, err = cli(capsys, "evaluate", runs["cvae"], "--data", wine / "unknown.csv", "--split", "all")
    assert status == 2 and "label 'zinfandel' is not one of the classes this run was trained on" in err
    assert "barbera, barolo, grignolino" in err
    # an unconditional model does not need the label: a new class is numbered after the run's,
    # and the command says so (it used to number it silently)
    status, _, err = cli(capsys, "encode", runs["vae"], "--data", wine / "unknown.csv", "-o", wine / "u.csv")
    assert status == 0, err
    assert ("not among the 3 classes this run was trained on (barbera, barolo, grignolino, numbered 0..2), "
            "numbered after them: 'zinfandel' → 3") in err
    rows = read_csv(wine / "u.csv")
    assert (rows[3]["label"], rows[3]["label_name"]) == ("3", "zinfandel")
    assert (rows[0]["label"], rows[0]["label_name"]) == ("1", "barolo")


def test_latent_figure_names_the_classes(runs, monkeypatch):
    from vaekit import plots
    from vaekit.app.data import run_splits
    from vaekit.app.runs import load_run

    model, config = load_run(runs["vae"])
    train = run_splits(config, run_dir=runs["vae"])["train"]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.latent_figure(model, train.x, train.labels, runs["vae"] / "x.png", class_names=train.classes)
    legend = figures[0].axes[0].get_legend()  # up to 20 classes: a legend (beyond, a colour bar)
    assert [t.get_text() for t in legend.get_texts()] == ["barbera", "barolo", "grignolino"]


# ---------------------------------------------------------------------- 2. no labels needed
def test_an_unconditional_model_scores_rows_without_the_label_column(wine, runs, capsys):
    status, out, err = cli(capsys, "evaluate", runs["vae"], "--data", wine / "nolabel.csv", "--split", "all",
                           "--importance-samples", "5", "--json", "--per-example", wine / "scores.csv")
    assert status == 0, err
    assert json.loads(out)["n"] == 178
    rows = read_csv(wine / "scores.csv")
    assert len(rows) == 178 and "label" not in rows[0] and rows[5]["row"] == "5"
    status, _, err = cli(capsys, "evaluate", runs["cvae"], "--data", wine / "nolabel.csv", "--split", "all")
    assert status == 2
    assert "this conditional model needs each example's class, but the data have no 'cultivar' column" in err


# ---------------------------------------------------------------------- 3. rows and files
def test_outputs_name_the_row_of_the_file(wine, runs, capsys):
    from vaekit.app.data import select_split
    from vaekit.app.runs import load_config

    run = runs["vae"]
    status, _, err = cli(capsys, "evaluate", run, "--split", "validation", "--importance-samples", "3",
                         "--no-save", "--per-example", wine / "val.csv")
    assert status == 0, err
    rows = read_csv(wine / "val.csv")
    validation = select_split(load_config(run), "validation", run_dir=run)
    positions = [int(r["row"]) for r in rows]
    assert positions == validation.rows.tolist() and positions != list(range(len(rows)))
    frame = pd.read_csv(wine / "wine.csv")
    for r in rows[:3]:  # the row named is the row of the file that was scored
        assert frame.loc[int(r["row"]), "cultivar"] == r["label_name"]


def test_image_folder_outputs_name_the_file(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray((rng.random((4, 4)) * 255).astype("uint8")).save(tmp_path / "imgs" / c / f"{i}.png")
    status, _, err = cli(capsys, "train", "--data", tmp_path / "imgs", "--likelihood", "continuous-bernoulli",
                         "--hidden", "8", "--epochs", "1", "--no-figures", "--out", tmp_path / "run", "-q")
    assert status == 0, err
    assert cli(capsys, "encode", tmp_path / "run", "-o", tmp_path / "z.csv")[0] == 0
    rows = read_csv(tmp_path / "z.csv")
    assert [r["file"] for r in rows[:2]] == ["cat/0.png", "cat/1.png"] and rows[6]["label_name"] == "dog"
    status, _, err = cli(capsys, "evaluate", tmp_path / "run", "--split", "all", "--importance-samples", "2",
                         "--per-example", tmp_path / "s.npy")
    assert status == 0, err
    table = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert table["file"][7] == "dog/1.png" and table["row"][7] == 7


# ---------------------------------------------------------------------- 4. the run's data, found again
def test_a_relative_data_path_is_the_same_file_from_any_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(40, 3)), columns=["u", "v", "w"]).to_csv(tmp_path / "a" / "t.csv", index=False)
    pd.DataFrame(rng.normal(size=(25, 3)), columns=["u", "v", "w"]).to_csv(tmp_path / "b" / "t.csv", index=False)
    monkeypatch.chdir(tmp_path / "a")
    status, _, err = cli(capsys, "train", "--data", "t.csv", "--likelihood", "gaussian", "--hidden", "8",
                         "--epochs", "1", "--no-figures", "--out", tmp_path / "run", "-q")
    assert status == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(tmp_path / "a" / "t.csv")
    monkeypatch.chdir(tmp_path / "b")  # another t.csv here
    status, out, err = cli(capsys, "evaluate", tmp_path / "run", "--split", "all", "--json",
                           "--importance-samples", "2")
    assert status == 0, err
    assert json.loads(out)["n"] == 40
    pd.DataFrame(rng.normal(size=(40, 3)), columns=["u", "v", "w"]).to_csv(tmp_path / "a" / "t.csv", index=False)
    for split in ("all", "validation"):
        status, _, err = cli(capsys, "evaluate", tmp_path / "run", "--split", split, "--json")
        assert status == 2 and "differs from the one this run recorded in data.json" in err
    assert not (tmp_path / "run" / "evaluation-validation.json").exists()


# ---------------------------------------------------------------------- 5. output off a terminal
def test_training_off_a_terminal_prints_epochs_and_a_summary(wine, capsys):
    run, out, err = train(capsys, wine, "printed", "--no-figures")  # what it prints is the point
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert epochs[0].startswith("epoch 1/3  train ELBO") and epochs[-1].startswith("epoch 3/3")
    assert "validation ELBO" in epochs[-1]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert f"train ELBO {metrics[-1]['train_elbo']:.2f}, validation ELBO {metrics[-1]['validation_elbo']:.2f}" in out
    assert f"log-likelihood {evaluation['log_likelihood']:.2f}" in out
    assert f"active units {evaluation['active_units']} of 2" in out
    assert f"run written to {run}" in out


# ---------------------------------------------------------------------- 6. tables
def test_table_figures_plot_features_by_name(wine, runs, monkeypatch):
    from vaekit import plots
    from vaekit.app.data import run_splits
    from vaekit.app.runs import load_run

    model, config = load_run(runs["vae"])
    splits = run_splits(config, run_dir=runs["vae"])
    train, shown = splits["train"], splits["validation"]
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    plots.draw_all(runs["vae"], model, train.x, train.labels, shown.x, shown.labels, [],
                   class_names=train.classes, feature_names=train.features,
                   data_units=train.standardization.invert)
    panels = [ax for ax in figures["reconstructions.png"].axes if ax.axison]
    assert len(panels) == 13 and panels[0].get_title().startswith("alcohol")
    first = panels[0].collections[0].get_offsets()  # (original, reconstruction) of every shown row
    original = train.standardization.invert(shown.x)[:, 0].numpy()
    np.testing.assert_allclose(first[:, 0], original, rtol=1e-6)
    assert figures["samples.png"].axes[12].get_title() == "proline"
    assert not any(ax.images for ax in figures["reconstructions.png"].axes)  # no grey strips


def test_table_samples_and_reconstructions_as_csv(wine, runs, capsys):
    run = runs["vae"]
    for suffix in ("csv", "npy"):
        assert cli(capsys, "sample", run, "-n", "7", "--seed", "3", "-o", wine / f"s.{suffix}")[0] == 0
        assert cli(capsys, "reconstruct", run, "-o", wine / f"r.{suffix}")[0] == 0
    features = list(pd.read_csv(wine / "nolabel.csv").columns)
    samples = pd.read_csv(wine / "s.csv")
    assert list(samples.columns) == features
    np.testing.assert_allclose(samples.to_numpy(), np.load(wine / "s.npy"), rtol=1e-6)
    assert samples["proline"].mean() > 100  # the data's units (hundreds), not standardised ones
    recon = pd.read_csv(wine / "r.csv")
    assert list(recon.columns) == ["row", *features, "label_name"] and len(recon) == 18
    np.testing.assert_allclose(recon[features].to_numpy(), np.load(wine / "r.npy"), rtol=1e-6)
    status, _, err = cli(capsys, "reconstruct", run, "-o", wine / "r.png")
    assert status == 0, err


def test_csv_output_is_for_tables(tiny_run, tmp_path, capsys):
    status, _, err = cli(capsys, "sample", tiny_run, "-o", tmp_path / "s.csv")
    assert status == 2 and "CSV output is for rows of features" in err


# ---------------------------------------------------------------------- 7. help and version
def test_train_help_shows_the_defaults_and_version_exists(capsys):
    status, out, _ = cli(capsys, "train", "--help")
    assert status == 0
    for flag, default in (("--epochs", "30"), ("--batch-size", "128"), ("--latent-dim", "2"),
                          ("--likelihood", "auto"), ("--hidden", "400"), ("--binarize", "auto")):
        text = " ".join(out.split(flag, 1)[1].split("--", 1)[0].split())
        assert f"[default: {default}]" in text, (flag, text)
    from vaekit import __version__

    status, out, _ = cli(capsys, "--version")
    assert status == 0 and out.strip() == f"vaekit {__version__}"


# ---------------------------------------------------------------------- 8. defaults that agree
def test_the_default_binarisation_suits_the_default_likelihood(tmp_path, capsys):
    from vaekit.app.config import Config

    assert Config(data="digits").binarize_protocol == "dynamic"
    assert Config(data="mnist").binarize_protocol == "dynamic"
    assert Config(data="digits", likelihood="gaussian").binarize_protocol == "none"
    assert Config(data="t.csv").binarize_protocol == "none"
    status, _, err = cli(capsys, "train", "--data", "digits", "--hidden", "8", "--epochs", "1", "--no-figures",
                         "--out", tmp_path / "run")
    assert status == 0, err
    assert "not a bound" not in err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["binarize"] == "dynamic"


# ---------------------------------------------------------------------- 9. outputs
def test_outputs_go_into_the_run_and_are_not_replaced_silently(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    status, out, err = cli(capsys, "sample", run, "-n", "4")
    assert status == 0, err
    assert (run / "samples-prior.png").is_file()
    before = (run / "samples-prior.png").read_bytes()
    status, _, err = cli(capsys, "sample", run, "-n", "9", "--seed", "1")
    assert status == 2 and "samples-prior.png already exists; pass --overwrite" in err
    assert (run / "samples-prior.png").read_bytes() == before
    assert cli(capsys, "sample", run, "-n", "9", "--seed", "1", "--overwrite")[0] == 0
    assert (run / "samples-prior.png").read_bytes() != before
    assert cli(capsys, "sample", run, "-n", "4", "--sampler", "gmm", "--components", "2")[0] == 0
    assert (run / "samples-gmm.png").is_file()
    assert cli(capsys, "encode", run)[0] == 0 and (run / "latents-all.npy").is_file()
    assert (run / "latents-all.logvar.npy").is_file()
    assert cli(capsys, "encode", run)[0] == 2
    assert cli(capsys, "reconstruct", run)[0] == 0 and (run / "reconstructions-validation.png").is_file()
    status, _, err = cli(capsys, "reconstruct", run, "-o", run / "samples.png")  # the run's figure
    assert status == 2 and "samples.png already exists" in err
    (tmp_path / "figs").mkdir()
    assert cli(capsys, "plot", run, "-o", tmp_path / "figs")[0] == 0
    assert (tmp_path / "figs" / "latent.png").is_file()
    status, _, err = cli(capsys, "plot", run, "-o", tmp_path / "figs")
    assert status == 2 and "--overwrite" in err
    assert cli(capsys, "plot", run)[0] == 0  # redrawing the run's own figures in place


# ---------------------------------------------------------------------- 10. --weights best
def test_weights_best_scores_the_best_epoch(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    status, out, err = cli(capsys, "evaluate", run, "--weights", "best", "--json", "--importance-samples", "20")
    assert status == 0, err
    best = json.loads(out)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(metrics, key=lambda m: m["validation_elbo"])["epoch"]
    assert (best["weights"], best["epoch"]) == ("best", best_epoch)
    assert json.loads((run / "evaluation-validation-best.json").read_text()) == best
    # the same numbers as a copy of the run whose last weights are the best ones
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.copy(run / "best.safetensors", copy / "model.safetensors")
    status, out, err = cli(capsys, "evaluate", copy, "--json", "--importance-samples", "20", "--no-save")
    last = json.loads(out)
    assert (last["weights"], last["epoch"]) == ("last", len(metrics))
    assert last["log_likelihood"] == best["log_likelihood"] and last["elbo"] == best["elbo"]
    (tmp_path / "figures").mkdir()
    for command in ("sample", "reconstruct", "encode", "plot"):
        where = ["-o", str(tmp_path / "figures")] if command == "plot" else []
        status, _, err = cli(capsys, command, run, "--weights", "best", "--threads", "1", *where)
        assert status == 0, err
    import vaekit

    model = vaekit.load(run, weights="best")
    torch.testing.assert_close(model.state_dict(), vaekit.load(copy).state_dict())


# ---------------------------------------------------------------------- 12. smaller ones
@pytest.mark.parametrize(("spec", "message"), [
    ("no/such/folder", "data not found: no/such/folder"),
    ("./mydata", "data not found: ./mydata"),
    ("digts", "unknown data 'digts' (did you mean 'digits'?)"),
])
def test_missing_data_says_not_found(tmp_path, capsys, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, "train", "--data", spec, "--out", "o")
    assert status == 2 and message in err


def test_a_text_column_suggests_label_column(wine, capsys):
    status, _, err = cli(capsys, "train", "--data", wine / "wine.csv", "--out", wine / "o")
    assert status == 2
    assert ("'barolo' is not a number; if column 'cultivar' holds class labels, "
            "name it with --label-column cultivar") in err


def test_evaluating_an_autoencoder_prints_no_empty_rows(tmp_path, capsys):
    status, _, err = cli(capsys, "train", "--data", "digits", "--model", "ae", "--hidden", "8", "--epochs", "1",
                         "--no-figures", "--out", tmp_path / "ae", "-q")
    assert status == 0, err
    status, out, err = cli(capsys, "evaluate", tmp_path / "ae", "--no-save")
    assert status == 0, err
    assert "reconstruction" in out and "autoencoder" in out
    for bad in ("—", "nan", "None", "log_likelihood", "mutual_information"):
        assert bad not in out


def test_threads_option_everywhere(tiny_run, tmp_path, capsys):
    for command in ("sample", "reconstruct", "encode", "plot"):
        status, _, err = cli(capsys, command, tiny_run, "--threads", "-1")
        assert status == 2 and "--threads must be 0 (auto) or more" in err


def test_datasets_print_briefly():
    from vaekit.app.data import load_data

    text = repr(load_data("digits"))
    assert len(text) < 300 and "tensor" not in text
    assert "'digits'" in text and "shape=[1797, 1, 8, 8]" in text and "labels 0..9" in text


# ---------------------------------------------------------------------- the README
README = __import__("pathlib").Path(__file__).resolve().parents[1] / "README.md"


def test_every_run_the_readme_uses_is_one_it_trains():
    import re

    text = README.read_text()
    trained = set(re.findall(r"vaekit train [^\n]*--out (runs/[\w-]+)", text))
    trained |= set(re.findall(r"vaekit\.train\([^\n]*\"(runs/[\w-]+)\"", text))
    used = set(re.findall(r"vaekit (?:evaluate|sample|reconstruct|encode|plot|explore) (runs/[\w-]+)", text))
    assert used and used <= trained, used - trained


def test_the_readme_table_workflow_runs(tmp_path, capsys, monkeypatch):
    """The README's table section as written (fewer epochs), then its claims about the files."""
    import re
    import shlex

    section = README.read_text().split("## Tables", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(python, str(README), "exec"), {})
    for line in commands.splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "vaekit"
        args = ["3" if a == "300" else a for a in args[1:]]  # --epochs 300 as --epochs 3
        status, _, err = cli(capsys, *args)
        assert status == 0, (line, err)
    scores = pd.read_csv("scores.csv")
    assert len(scores) == 20 and "label" not in scores and list(scores["row"]) == list(range(20))
    latents = pd.read_csv("latents.csv")
    wine = pd.read_csv("wine.csv")
    assert (latents["label_name"] == wine["cultivar"][latents["row"]].to_numpy()).all()
    synthetic = pd.read_csv("synthetic.csv")
    assert len(synthetic) == 500 and list(synthetic.columns) == list(wine.columns[:-1])
    recon = pd.read_csv("reconstructions.csv")
    assert list(recon.columns[:2]) == ["row", "alcohol"]
