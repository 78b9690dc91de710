"""The command line: a thin layer over the Python API.

Nothing heavy is imported at module level, so ``vaekit --help`` starts without torch.
Every user error ends as one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from vaekit.errors import Interrupted, VaekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Variational Autoencoders on PyTorch: train, evaluate, sample, reconstruct, encode, plot.",
)

Opt = typer.Option
_NOT_SETTINGS = ("out", "config", "overwrite", "figures", "quiet", "resume")  # --preset is recorded as a setting
RunDir = Annotated[Path, typer.Argument(help="A run directory written by 'vaekit train'.")]


@app.command()
def train(
    data: Annotated[str | None, Opt(help="Dataset: digits (built in), mnist | fashion-mnist | kmnist (downloaded once, verified), a .npy/.npz/.csv/.tsv/.parquet file, or a folder of images.")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run directory to write (default runs/<data>-<model>-<time>).")] = None,
    config: Annotated[Path | None, Opt(help="TOML (or JSON) file of settings; flags override it.")] = None,
    preset: Annotated[str | None, Opt(help="Start from a published protocol's settings (vaekit presets lists them); --config and flags override it.")] = None,
    data_dir: Annotated[str | None, Opt(help="Folder already holding a published dataset's official files (instead of the download cache).")] = None,
    binarize: Annotated[str | None, Opt(help="none | dynamic | static | threshold:LEVEL.")] = None,
    validation_fraction: Annotated[float | None, Opt(help="Share of training data held out for validation.")] = None,
    mirror: Annotated[str | None, Opt(help="Base URL(s), comma-separated, to download published datasets from as URL/<file name> (default: $VAEKIT_MIRROR, else the official hosts, then mirrors).")] = None,
    image_size: Annotated[int | None, Opt(help="Image folders: resize every image to N x N (0: keep sizes, which must then all match).")] = None,
    image_mode: Annotated[str | None, Opt(help="Image folders: auto | grey | rgb (auto: grey when every image is).")] = None,
    label_column: Annotated[str | None, Opt(help="CSV/Parquet: the column holding labels (not used as a feature).")] = None,
    standardize: Annotated[bool | None, Opt("--standardize/--no-standardize", help="Standardise every feature to mean 0, sd 1 over the training split; recorded in the run and applied by evaluate/encode/sample.")] = None,
    validation_split: Annotated[str | None, Opt(help="fraction (a seeded share of the training data) | test (the dataset's official test split).")] = None,
    model: Annotated[str | None, Opt(help="vae | ae (the deterministic autoencoder) | cvae (conditional on the label) | hvae (two stochastic layers).")] = None,
    architecture: Annotated[str | None, Opt(help="mlp | linear (linear = probabilistic PCA's model) | conv.")] = None,
    hidden: Annotated[str | None, Opt(help="Hidden layer sizes, e.g. 400 or 400,200 (decoder mirrors).")] = None,
    activation: Annotated[str | None, Opt(help="relu | tanh | elu | softplus | gelu | silu | leaky_relu | sigmoid.")] = None,
    latent_dim: Annotated[int | None, Opt(help="Latent dimensions d.")] = None,
    likelihood: Annotated[str | None, Opt(help="bernoulli | gaussian | continuous-bernoulli | logistic (discretised) | laplace.")] = None,
    sigma: Annotated[str | None, Opt(help="Gaussian σ_G (Laplace scale): fixed:VALUE | shared | per-dim.")] = None,
    sigma_min: Annotated[float | None, Opt(help="Floor on a learned σ_G.")] = None,
    samples: Annotated[int | None, Opt(help="Monte-Carlo samples M per data point.")] = None,
    kl: Annotated[str | None, Opt(help="KL estimator: analytic | mc.")] = None,
    beta: Annotated[float | None, Opt(help="Weight on the KL term while training (reported ELBO always uses 1).")] = None,
    epochs: Annotated[int | None, Opt(help="Passes over the training data.")] = None,
    steps: Annotated[int | None, Opt(help="Budget in optimisation steps instead of --epochs (0: off; the last epoch is cut short).")] = None,
    time_budget: Annotated[str | None, Opt(help="Budget in training time instead of --epochs, e.g. 60m, 1.5h, 90s: the number of steps is planned from the measured time per step (and re-planned if the pace changes); schedules follow the plan.")] = None,
    patience: Annotated[int | None, Opt(help="Stop when the validation ELBO has not improved for N epochs, keeping the best epoch's weights (0: off).")] = None,
    batch_size: Annotated[int | None, Opt(help="Examples per minibatch.")] = None,
    optimizer: Annotated[str | None, Opt(help="adam | adamw | adagrad | sgd.")] = None,
    lr: Annotated[float | None, Opt(help="Learning rate (the initial one, under a schedule).")] = None,
    lr_schedule: Annotated[str | None, Opt(help="constant | step[:EPOCHS[:GAMMA]] (default 10:0.5) | exponential[:GAMMA] (per epoch, 0.95) | cosine[:FINAL] (to FINAL x lr over the planned steps, 0) | geometric[:HOLD[:FINAL]] (constant for HOLD of the steps, then geometric to FINAL x lr; 0.25:0.05) | plateau[:PATIENCE[:FACTOR]] (5:0.5) | burda (3^i passes at lr x 10^(-i/7), i = 0..7).")] = None,
    adam_betas: Annotated[str | None, Opt(help="Adam/AdamW beta1,beta2 (default 0.9,0.999).")] = None,
    adam_eps: Annotated[float | None, Opt(help="Adam/AdamW epsilon (default 1e-8; Burda et al. use 1e-4).")] = None,
    weight_decay: Annotated[float | None, Opt(help="Weight decay (L2 for adam, adagrad and sgd; decoupled for adamw).")] = None,
    init: Annotated[str | None, Opt(help="default (torch's) | glorot (Glorot-uniform weights, zero biases) | normal:SD.")] = None,
    output_bias: Annotated[str | None, Opt(help="zero (default: as built) | data (the decoder's output bias at the likelihood's natural parameter of the training mean, e.g. the logit of the mean pixel: what lets a tanh decoder reach MNIST's background without saturating).")] = None,
    grad_clip: Annotated[float | None, Opt(help="Clip the gradient norm to this (0: off).")] = None,
    seed: Annotated[int | None, Opt(help="Random seed (initialisation, data order, splits).")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads for torch (0: auto, every core other processes leave free, re-checked while training).")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = None,
    precision: Annotated[str | None, Opt(help="fp32 | bf16 (bf16 autocast while training; validation and evaluation in fp32).")] = None,
    checkpoint_every: Annotated[int | None, Opt(help="Write a checkpoint every N epochs (0: off).")] = None,
    checkpoint_minutes: Annotated[float | None, Opt(help="Also write one every T minutes, between steps (0: off).")] = None,
    save_best: Annotated[bool | None, Opt("--save-best/--no-save-best", help="Keep the best validation epoch's weights in best.safetensors.")] = None,
    max_bad_steps: Annotated[int | None, Opt(help="Stop after this many steps in a row with a non-finite loss or gradient.")] = None,
    channels: Annotated[str | None, Opt(help="Conv architecture: channels per stride-2 layer, e.g. 32,64 (the image side must be divisible by 2^layers).")] = None,
    latent_dim2: Annotated[int | None, Opt(help="Model hvae: size of the top latent layer z2 (0: half of --latent-dim).")] = None,
    hidden2: Annotated[str | None, Opt(help="Model hvae: hidden sizes between z1 and z2, e.g. 100,100.")] = None,
    classes: Annotated[int | None, Opt(help="Model cvae: number of classes (0: from the training labels).")] = None,
    levels: Annotated[int | None, Opt(help="Logistic likelihood: grey levels of the data (256 for 8-bit images, 17 for digits).")] = None,
    k: Annotated[int | None, Opt("--k", help="Objective iwae: importance samples per data point.")] = None,
    kl_warmup: Annotated[int | None, Opt(help="Epochs of linear KL warm-up from 0 to beta (0: none).")] = None,
    free_bits: Annotated[float | None, Opt(help="Free bits: KL floor per latent dimension in nats (0: off).")] = None,
    objective: Annotated[str | None, Opt(help="Training objective: elbo | iwae (the importance-weighted bound with --k samples).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a run already in --out.")] = False,
    figures: Annotated[bool, Opt(help="Draw the figures at the end.")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar or messages.")] = False,
    resume: Annotated[Path | None, Opt(help="Continue the run in this directory from its checkpoint (only budget settings such as --epochs may change).")] = None,
) -> None:
    """Train a VAE (or AE) and write a run directory with weights, metrics and figures."""
    flags = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    from vaekit.app.config import Config, read_config_file
    from vaekit.app.runs import train as run_training
    from vaekit.app.threads import tune_allocator

    tune_allocator()  # a CLI process keeps freed memory for reuse (vaekit.app.threads)
    if resume is not None:
        from vaekit.app.runs import resume as resume_training

        if preset is not None:
            raise VaekitError("--preset starts a new run; --resume continues one with its own settings: choose one")
        if out is not None and out.resolve() != resume.resolve():
            raise VaekitError("--resume continues a run where it is: drop --out (or make it the same)")
        if overwrite:
            raise VaekitError("--resume and --overwrite contradict each other: choose one")
        changes: dict = {}
        if config:
            Config.from_file(config)  # checks the file on its own first
            changes.update(read_config_file(config))
        changes.update({k: v for k, v in flags.items() if v is not None})
        resume_training(resume, changes, quiet=quiet, figures=figures)
        return
    base = Config()
    if preset is not None:
        from vaekit.app import presets

        base = presets.load(preset).config()
    if config:
        base = base.override(read_config_file(config), source=str(config))
    resolved = base.override(flags)
    if out is None:
        import time

        name = preset or f"{Path(resolved.data).stem or 'data'}-{resolved.model}"
        out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_training(resolved, out, overwrite=overwrite, quiet=quiet, figures=figures)


@app.command()
def evaluate(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Other data to score (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: test if the data has one, else validation).")] = None,
    importance_samples: Annotated[int, Opt(help="Importance samples K per example for the log-likelihood (published MNIST numbers use 5000).")] = 1000,
    iwae_k: Annotated[int | None, Opt(help="k of the reported IWAE bound L_k (default 50, or K if smaller).")] = None,
    batch_size: Annotated[int, Opt(help="Examples per evaluation batch (memory does not grow with K).")] = 1000,
    seed: Annotated[int, Opt(help="Seed for the Monte-Carlo draws.")] = 0,
    per_example: Annotated[Path | None, Opt(help="Write every example's ELBO and log-likelihood (anomaly scores) to FILE.csv or FILE.npy.")] = None,
    gap_decomposition: Annotated[bool, Opt(help="Split the gap into amortisation and approximation gaps by fitting a Gaussian to each example (slower).")] = False,
    local_steps: Annotated[int, Opt(help="Adam steps per example's Gaussian for --gap-decomposition.")] = 200,
    curve: Annotated[bool, Opt(help="Draw the log-likelihood estimate against K, with the ELBO, into likelihood_curve.png in the run directory.")] = False,
    save: Annotated[bool, Opt(help="Store the result as evaluation-SPLIT.json in the run directory (the run's own data only).")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    binarize: Annotated[str | None, Opt(help="Binarisation protocol for the data (default: the run's own, from its config).")] = None,
    data_dir: Annotated[str | None, Opt(help="Folder holding the dataset's official files (default: the run's).")] = None,
    mirror: Annotated[str | None, Opt(help="Base URL(s) to download a published dataset from.")] = None,
    samples: Annotated[int | None, Opt(help="Same as --importance-samples: the draws per example behind every Monte-Carlo figure, the ELBO's included.")] = None,
    threads: Annotated[int, Opt(help="CPU threads for torch (0: auto, every core other processes leave free, re-checked while scoring).")] = 0,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
) -> None:
    """Score a trained model: ELBO, importance-sampled log-likelihood, the gap, active units
    and mutual information; per-example means in nats, each with its Monte-Carlo standard error."""
    from vaekit.app.threads import ThreadPolicy, tune_allocator
    from vaekit.devices import forked_rng, model_device
    from vaekit.evaluation import check_samples, format_table, summarise, write_per_example
    from vaekit.evaluation import per_example as score_examples

    overrides = {"binarize": binarize, "data_dir": data_dir, "mirror": mirror}
    model, config, dataset, split = _model_and_data(run_dir, data, split, overrides, device)
    _positive("--batch-size", batch_size)
    _positive("--local-steps", local_steps)
    if samples is not None:
        _positive("--samples", samples)
        importance_samples = samples
    k, iwae_k = check_samples(importance_samples, iwae_k)
    if per_example is not None:
        _check_output(per_example, (".csv", ".npy"))
    if threads < 0:
        raise VaekitError(f"--threads must be 0 (auto) or more, got {threads}")
    tune_allocator()  # chunks free and re-allocate tens of MB: keep those pages (vaekit.app.threads)
    policy = ThreadPolicy(threads, quiet=quiet or as_json)
    labels = _labels(model, dataset)
    total = len(dataset) * (2 if gap_decomposition else 1)
    with forked_rng(model_device(model), seed), _progress(quiet, f"evaluating (K = {k})", total) as advance:
        scores = score_examples(
            model, dataset.x, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
            curve=curve, gap_decomposition=gap_decomposition, local_steps=local_steps,
            labels=labels, on_progress=lambda n: (advance(n), policy.check()),
        )
        result = {"split": split, "seed": seed, **summarise(
            model, dataset.x, scores, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
            labels=labels)}
    notes = []
    if per_example is not None:
        write_per_example(scores, per_example, dataset.labels)
        notes.append(f"wrote per-example scores to {per_example}")
    if curve and result.get("curve"):
        from vaekit import plots

        notes.append(f"wrote {plots.likelihood_curve_figure(result, run_dir / 'likelihood_curve.png')}")
    if save and (data is None or data == config.data):
        notes.append(_save_evaluation(run_dir / f"evaluation-{split}.json", result))
    if as_json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    for note in notes:
        print(note, file=sys.stderr)


@app.command()
def sample(
    run_dir: RunDir,
    n: Annotated[int, Opt("-n", "--n", help="How many samples.")] = 64,
    output: Annotated[Path, Opt("--output", "-o", help="FILE.png (a grid) or FILE.npy (the array).")] = Path("samples.png"),
    seed: Annotated[int, Opt(help="Seed for the prior draws.")] = 0,
    draw: Annotated[bool, Opt(help="Draw x ~ p(x|z) instead of showing the mean E[x|z].")] = False,
    label: Annotated[int | None, Opt(help="Conditional model: the class to draw (default: all classes in turn).")] = None,
    sampler: Annotated[str, Opt(help="prior (z ~ p(z)) | gmm (z ~ a Gaussian mixture fitted to the training posterior means).")] = "prior",
    components: Annotated[int, Opt(help="Sampler gmm: mixture components.")] = 10,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
) -> None:
    """Draw samples from the prior (or an ex-post Gaussian mixture) and decode them."""

    from vaekit.app.runs import load_run

    _positive("-n", n)
    _check_output(output, (".png", ".npy"))
    if sampler not in ("prior", "gmm"):
        raise VaekitError(f"--sampler must be 'prior' or 'gmm', got '{sampler}'")
    _positive("--components", components)
    model, config = load_run(run_dir, device=device)
    if label is not None:
        classes = getattr(model, "num_classes", 0)
        if not classes:
            raise VaekitError(f"--label needs a conditional model (--model cvae); {run_dir} is '{config.model}'")
        if not 0 <= label < classes:
            raise VaekitError(f"--label must be in 0..{classes - 1} for this model, got {label}")
    from vaekit.devices import forked_rng, model_device
    from vaekit.sampling import decode_latents

    with forked_rng(model_device(model), seed):
        if sampler == "gmm":
            from vaekit.app.runs import fit_gmm_for_run
            from vaekit.sampling import sample_gmm_latents

            gmm = fit_gmm_for_run(model, config, components, seed, run_dir)
            images = decode_latents(model, sample_gmm_latents(gmm, n, seed), label, mean=not draw)
            title = f"{n} samples from {run_dir}, z from a {components}-component mixture"
        else:
            images = decode_latents(model, model.prior_draws(n), label, mean=not draw)
            title = f"{n} samples from {run_dir}"
    if label is not None:
        title += f", class {label}"
    _write_images(_original_units(images, run_dir), output, title)


@app.command()
def reconstruct(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to reconstruct (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all.")] = None,
    n: Annotated[int, Opt("-n", "--n", help="How many examples (the first n of the split).")] = 10,
    output: Annotated[Path, Opt("--output", "-o", help="FILE.png (originals above reconstructions) or FILE.npy.")] = Path("reconstructions.png"),
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
) -> None:
    """Reconstruct examples through the posterior mean: E[x | z = μ(x)]."""
    from vaekit.sampling import reconstruct as reconstruct_batch

    _positive("-n", n)
    _check_output(output, (".png", ".npy"))
    model, _, dataset, _ = _model_and_data(run_dir, data, split, None, device)
    labels = _labels(model, dataset)
    originals = dataset.x[:n]
    recon = reconstruct_batch(model, originals, None if labels is None else labels[:n])
    if output.suffix.lower() == ".npy":
        _write_images(_original_units(recon, run_dir), output, "")
    else:
        from vaekit import plots

        plots.reconstructions_figure(model, originals, output, n=len(originals),
                                     labels=None if labels is None else labels[:n])
        print(f"wrote {output}")


@app.command()
def encode(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to encode (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: all).")] = None,
    output: Annotated[Path, Opt("--output", "-o", help="FILE.npy (means; log-variances in FILE.logvar.npy), FILE.npz or FILE.csv.")] = Path("latents.npy"),
    batch_size: Annotated[int, Opt(help="Examples per batch.")] = 1000,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
) -> None:
    """Write every example's posterior mean μ(x) and log-variance log σ²(x)."""
    import numpy as np
    import torch

    from vaekit.rundir import write_output
    from vaekit.sampling import encode_posterior

    _positive("--batch-size", batch_size)
    _check_output(output, (".npy", ".npz", ".csv"))
    model, _, dataset, _ = _model_and_data(run_dir, data, split or "all", None, device)
    labels_in = _labels(model, dataset)
    mus, logvars = [], []
    for i in range(0, len(dataset), batch_size):
        q = encode_posterior(model, dataset.x[i : i + batch_size],
                             None if labels_in is None else labels_in[i : i + batch_size])
        mus.append(q.mean.cpu())
        logvars.append(torch.log(q.variance).cpu())
    mu = torch.cat(mus).numpy()
    logvar = torch.cat(logvars).numpy()
    labels = None if dataset.labels is None else dataset.labels.numpy()
    suffix = output.suffix.lower()
    if suffix == ".npy":
        write_output(output, lambda f: np.save(f, mu))
        write_output(output.with_suffix(".logvar.npy"), lambda f: np.save(f, logvar))
    elif suffix == ".npz":
        arrays = {"mu": mu, "logvar": logvar}
        if labels is not None:
            arrays["labels"] = labels
        write_output(output, lambda f: np.savez(f, **arrays))
    else:
        d = mu.shape[1]
        header = [f"mu_{i + 1}" for i in range(d)] + [f"logvar_{i + 1}" for i in range(d)]
        columns = [mu, logvar]
        if labels is not None:
            header.append("label")
            columns.append(labels[:, None])
        table = np.concatenate([c.astype(np.float64) for c in columns], axis=1)
        fmt = ["%.8g"] * (2 * d) + (["%d"] if labels is not None else [])
        write_output(output, lambda f: np.savetxt(f, table, delimiter=",", header=",".join(header), comments="", fmt=fmt))
    print(f"wrote {len(mu)} posterior means ({mu.shape[1]}-D) to {output}")


@app.command()
def plot(
    run_dir: RunDir,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
) -> None:
    """(Re)draw a run's figures from its weights and metrics."""
    from vaekit import plots
    from vaekit.app.data import run_splits
    from vaekit.app.runs import load_run
    from vaekit.rundir import read_metrics

    model, config = load_run(run_dir, device=device)
    splits = run_splits(config, run_dir=run_dir)
    train, shown = splits["train"], splits.get("validation") or splits.get("test") or splits["train"]
    paths = plots.draw_all(run_dir, model, train.x, train.labels, shown.x, shown.labels, read_metrics(run_dir))
    for path in paths:
        print(f"wrote {path}")


@app.command()
def presets(
    name: Annotated[str | None, typer.Argument(help="A preset to show in full (its notes and settings).")] = None,
    records: Annotated[Path | None, Opt(help="Folder of reproduction records (NAME.json, from benchmarks/reproduce.py) to read the measured numbers from (default: the ones shipped with vaekit).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """List the presets (published protocols): name, paper, model, protocol, the published
    number and the one measured by a reproduction run (benchmarks/reproduce.py NAME).
    Train one with: vaekit train --preset NAME [flags that override it]."""
    from vaekit.app import presets as known

    if name is not None:
        preset = known.load(name)
        rec = known.record(name, records)
        if as_json:
            print(json.dumps({"name": name, **preset.meta, "settings": preset.settings, "record": rec}))
            return
        for key in ("paper", "reference", "model", "protocol", "protocol_details", "metric", "published"):
            if key in preset.meta:
                print(f"{key}: {preset.meta[key]}")
        print(f"measured: {known.measured_text(rec)}")
        if "note" in preset.meta:
            print("note: " + " ".join(preset.meta["note"].split()))
        print("settings:")
        for key, value in preset.settings.items():
            print(f"  {key} = {json.dumps(value)}")
        return
    rows = known.table(records)
    if as_json:
        print(json.dumps(rows))
        return
    header = ("name", "paper", "model", "protocol", "published", "measured")
    lines = [header] + [(r["name"], r["paper"], r["model"], r["protocol"],
                         "-" if r["published"] is None else f"{r['published']:.2f}", r["measured"]) for r in rows]
    caps = (40, 30, 46, 46, 9, 60)  # `vaekit presets NAME` shows a preset in full
    widths = [min(max(len(str(line[i])) for line in lines), cap) for i, cap in enumerate(caps)]
    for line in lines:
        cells = [str(c) if len(str(c)) <= w else str(c)[: w - 1] + "…" for c, w in zip(line, widths, strict=True)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    print("train one: vaekit train --preset NAME [flags]; details: vaekit presets NAME")


data_app = typer.Typer(no_args_is_help=True, help="Published datasets: what is known and cached; fetch ahead of time.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """Show the known datasets, whether each is in the cache, and its size."""
    from vaekit.app.data import download, mnist

    rows = [("name", "cached", "size", "verified by"),
            ("digits", "built in", "-", "(bundled with scikit-learn)")]
    for ds in mnist.REMOTE.values():
        present, size = download.status(ds)
        total = len(ds.files)
        cached = "yes" if present == total else "no" if present == 0 else f"partly ({present}/{total} files)"
        rows.append((ds.name, cached, _size(size) if present else f"{ds.download_size} to download",
                     ds.verified_by))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"cache: {download.cache_dir()} (set ${download.ENV_CACHE} to use another folder)")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="mnist | fashion-mnist | kmnist.")],
    mirror: Annotated[str | None, Opt(help="Base URL(s), comma-separated, to download from as URL/<file name>.")] = None,
    data_dir: Annotated[Path | None, Opt(help="Download into this folder instead of the cache.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar or messages.")] = False,
) -> None:
    """Download a published dataset ahead of time (and re-check files already there)."""
    from vaekit.app.config import parse_mirrors
    from vaekit.app.data import download, mnist

    if name not in mnist.REMOTE:
        known = ", ".join(mnist.REMOTE)
        extra = " (digits is built in: nothing to fetch)" if name == "digits" else ""
        raise VaekitError(f"unknown dataset '{name}'{extra}; known: {known}")
    if mirror is not None:
        parse_mirrors(mirror)
    ds = mnist.REMOTE[name]
    folder = download.fetch(ds, mirror=mirror, dest=data_dir, quiet=quiet, verify=True)
    print(f"{name}: {len(ds.files)} files verified ({ds.verified_by}) in {folder}")


# ---------------------------------------------------------------------- helpers
def _model_and_data(run_dir: Path, data: str | None, split: str | None, overrides: dict | None = None,
                    device: str = "cpu"):
    from vaekit.app.data import select_default_split, select_split
    from vaekit.app.runs import load_run

    model, config = load_run(run_dir, device=device)
    if overrides and any(v is not None for v in overrides.values()):
        config = config.override(overrides, source="command line")
    own = data is None or data == config.data
    if split is None and own:
        split, dataset = select_default_split(config, run_dir)  # the data are read once
    else:
        split = split or "all"
        dataset = select_split(config, split, data, run_dir=run_dir)
    if dataset.event_shape != model.event_shape:
        raise VaekitError(
            f"data shaped {list(dataset.event_shape)} per example, but the model in {run_dir} "
            f"was trained on {list(model.event_shape)}"
        )
    return model, config, dataset, split


def _save_evaluation(path: Path, result: dict) -> str:
    from vaekit.rundir import write_json

    try:
        write_json(path, result)
    except OSError as err:  # a read-only run someone sent: the printed result is what counts
        return f"warning: could not store the result in {path} ({err.strerror or err})"
    return f"stored the result in {path}"


def _original_units(x, run_dir: Path):
    """Model-space values back in the data's units where the run standardised its data."""
    from vaekit.app.data import recorded_standardization

    st = recorded_standardization(run_dir)
    return x if st is None else st.invert(x)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _labels(model, dataset):
    from vaekit.app.runs import labels_for

    return labels_for(model, dataset)


def _write_images(images, output: Path, title: str) -> None:
    import numpy as np

    if output.suffix.lower() == ".npy":
        from vaekit.rundir import write_output

        write_output(output, lambda f: np.save(f, images.numpy()))
    else:
        from vaekit.plots import images_figure

        images_figure(images, output, title)
    print(f"wrote {output}")


def _progress(quiet: bool, description: str, total: float):
    """A context manager giving ``advance(n)``: a rich progress bar on stderr, or nothing."""
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if quiet:
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True),
                      transient=not sys.stderr.isatty()) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.update(task, advance=n)

    return bar()


def _check_output(output: Path, suffixes: tuple[str, ...]) -> None:
    if output.suffix.lower() not in suffixes:
        raise VaekitError(f"output {output} must end in {' or '.join(suffixes)}")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise VaekitError(f"output folder {parent} does not exist")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise VaekitError(f"{name} must be at least 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 success, 2 user error, 130 interrupted)."""
    try:
        app(args=argv, prog_name="vaekit")
    except SystemExit as done:  # typer's normal way out, including usage errors
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except VaekitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the machine's problem, not a bug: one line, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())


# ---------------------------------------------------------------------- looking at runs
@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (several: compared side by side).")],
    output: Annotated[Path, Opt("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write one self-contained HTML file (opens offline) with each run's config, evaluation
    table, interactive training curves, log-likelihood-vs-K curve and figures; several runs
    side by side, with the settings that differ."""
    from vaekit.app.report import write_report

    print(f"wrote {write_report(run_dirs, output)}")


@app.command("runs")
def runs_command(
    folder: Annotated[Path, typer.Argument(help="Folder to search for run directories (at any depth).")] = Path("runs"),
    as_json: Annotated[bool, Opt("--json", help="Print a JSON list, one object per run.")] = False,
) -> None:
    """List the runs under FOLDER: name, data, model, epochs done/planned, status, best
    validation ELBO, test log-likelihood (from evaluation-test.json), training wall time.

    Status, read from the run's files: finished (all epochs and evaluation.json); running
    (a file written within twice the longest epoch, or twice checkpoint_minutes, plus a
    minute); stopped (the newest file is a mid-epoch checkpoint, as Ctrl-C or SIGTERM
    leave); killed (anything else). Stopped and killed runs continue with --resume."""
    from vaekit.app.catalog import format_runs, runs_table

    rows = runs_table(folder)
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no runs under {folder}")
    else:
        print(format_runs(rows))


@app.command()
def explore(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Other data to encode and show (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: test if the data has one, else validation).")] = None,
    host: Annotated[str, Opt(help="Address to serve on. Anything but a loopback address lets other machines in (a warning says so).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port to serve on (0: any free port; the URL is printed).")] = 0,
    browser: Annotated[bool, Opt("--browser/--no-browser", help="Open the page in the default web browser.")] = True,
    points: Annotated[int, Opt(help="Examples shown at most (a seeded random subset of larger data).")] = 10_000,
) -> None:
    """Serve a local web page to explore the latent space: the encoded data coloured by
    class, a click decodes any point, sliders move z, two picked examples are interpolated,
    the decoded grid lies under the points at the current zoom. Ctrl-C stops it."""
    from vaekit.app.explore import serve

    serve(run_dir, data=data, split=split, host=host, port=port, open_browser=browser, max_points=points)
