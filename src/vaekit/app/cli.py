"""The command line: a thin layer over the Python API.

Nothing heavy is imported at module level, so ``vaekit --help`` starts without torch.
Every user error ends as one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import re
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
_NOT_SETTINGS = ("out", "config", "overwrite", "figures", "quiet", "resume", "dist_backend")  # --preset is recorded as a setting
DistBackend = Annotated[str, Opt(help="Under torchrun: the torch.distributed backend, auto (NCCL for GPUs, gloo for the CPU) | gloo | nccl.")]
RunDir = Annotated[Path, typer.Argument(help="A run directory written by 'vaekit train'.")]


def _default(name: str) -> str:
    """A setting's default as ``train --help`` shows it (the flags default to "not given", so
    that a --config file can set them; this is what applies when neither does)."""
    from dataclasses import MISSING, fields

    from vaekit.app.config import Config

    f = next(f for f in fields(Config) if f.name == name)
    value = f.default if f.default is not MISSING else f.default_factory()
    if isinstance(value, bool):
        return name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value == "" else str(value)


def _version(show: bool) -> None:
    if show:
        from vaekit import __version__

        print(f"vaekit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, Opt("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Variational Autoencoders on PyTorch: train, evaluate, sample, reconstruct, encode, plot."""


@app.command()
def train(
    data: Annotated[str | None, Opt(help="Dataset: digits (built in), mnist | fashion-mnist | kmnist (downloaded once, verified), a .npy/.npz/.csv/.tsv/.parquet file, or a folder of images.", show_default=_default("data"))] = None,
    out: Annotated[str | None, Opt("--out", "-o", metavar="PATH", help="Run directory to write (default runs/<data>-<model>-<time>).")] = None,
    config: Annotated[Path | None, Opt(help="TOML (or JSON) file of settings; flags override it.")] = None,
    preset: Annotated[str | None, Opt(help="Start from a published protocol's settings (vaekit presets lists them); --config and flags override it.")] = None,
    data_dir: Annotated[str | None, Opt(help="Folder already holding a published dataset's official files (instead of the download cache).")] = None,
    binarize: Annotated[str | None, Opt(help="auto | none | dynamic | static | threshold:LEVEL (auto: dynamic for the bernoulli likelihood on digits and the MNIST family, whose ELBO is a bound only on binary data; none otherwise).", show_default=_default("binarize"))] = None,
    validation_fraction: Annotated[float | None, Opt(help="Share of training data held out for validation.", show_default=_default("validation_fraction"))] = None,
    mirror: Annotated[str | None, Opt(help="Base URL(s), comma-separated, to download published datasets from as URL/<file name> (default: $VAEKIT_MIRROR, else the official hosts, then mirrors).")] = None,
    image_size: Annotated[int | None, Opt(help="Image folders: resize every image to N x N (0: keep sizes, which must then all match).", show_default=_default("image_size"))] = None,
    image_mode: Annotated[str | None, Opt(help="Image folders: auto | grey | rgb (auto: grey when every image is).", show_default=_default("image_mode"))] = None,
    label_column: Annotated[str | None, Opt(help="CSV/Parquet: the column holding labels (not used as a feature).")] = None,
    standardize: Annotated[bool | None, Opt("--standardize/--no-standardize", help="Standardise every feature to mean 0, sd 1 over the training split; recorded in the run and applied by evaluate/encode/sample.", show_default=_default("standardize"))] = None,
    validation_split: Annotated[str | None, Opt(help="fraction (a seeded share of the training data) | test (the dataset's official test split).", show_default=_default("validation_split"))] = None,
    model: Annotated[str | None, Opt(help="vae | ae (the deterministic autoencoder) | cvae (conditional on the label) | hvae (two stochastic layers).", show_default=_default("model"))] = None,
    architecture: Annotated[str | None, Opt(help="mlp | linear (linear = probabilistic PCA's model) | conv.", show_default=_default("architecture"))] = None,
    hidden: Annotated[str | None, Opt(help="Hidden layer sizes, e.g. 400 or 400,200 (decoder mirrors).", show_default=_default("hidden"))] = None,
    activation: Annotated[str | None, Opt(help="relu | tanh | elu | softplus | gelu | silu | leaky_relu | sigmoid.", show_default=_default("activation"))] = None,
    latent_dim: Annotated[int | None, Opt(help="Latent dimensions d.", show_default=_default("latent_dim"))] = None,
    likelihood: Annotated[str | None, Opt(help="bernoulli | gaussian | continuous-bernoulli | logistic (discretised) | laplace.", show_default=_default("likelihood"))] = None,
    sigma: Annotated[str | None, Opt(help="Gaussian σ_G (Laplace scale): fixed:VALUE | shared | per-dim.", show_default=_default("sigma"))] = None,
    sigma_min: Annotated[float | None, Opt(help="Floor on a learned σ_G.", show_default=_default("sigma_min"))] = None,
    samples: Annotated[int | None, Opt(help="Monte-Carlo samples M per data point.", show_default=_default("samples"))] = None,
    kl: Annotated[str | None, Opt(help="KL estimator: analytic | mc.", show_default=_default("kl"))] = None,
    beta: Annotated[float | None, Opt(help="Weight on the KL term while training (reported ELBO always uses 1).", show_default=_default("beta"))] = None,
    epochs: Annotated[int | None, Opt(help="Passes over the training data.", show_default=_default("epochs"))] = None,
    steps: Annotated[int | None, Opt(help="Budget in optimisation steps instead of --epochs (0: off; the last epoch is cut short).", show_default=_default("steps"))] = None,
    time_budget: Annotated[str | None, Opt(help="Budget in training time instead of --epochs, e.g. 60m, 1.5h, 90s: the number of steps is planned from the measured time per step (and re-planned if the pace changes); schedules follow the plan.", show_default=_default("time_budget"))] = None,
    patience: Annotated[int | None, Opt(help="Stop when the validation ELBO has not improved for N epochs, keeping the best epoch's weights (0: off).", show_default=_default("patience"))] = None,
    batch_size: Annotated[int | None, Opt(help="Examples per minibatch.", show_default=_default("batch_size"))] = None,
    optimizer: Annotated[str | None, Opt(help="adam | adamw | adagrad | sgd.", show_default=_default("optimizer"))] = None,
    lr: Annotated[float | None, Opt(help="Learning rate (the initial one, under a schedule).", show_default=_default("lr"))] = None,
    lr_schedule: Annotated[str | None, Opt(help="constant | step[:EPOCHS[:GAMMA]] (default 10:0.5) | exponential[:GAMMA] (per epoch, 0.95) | cosine[:FINAL] (to FINAL x lr over the planned steps, 0) | geometric[:HOLD[:FINAL]] (constant for HOLD of the steps, then geometric to FINAL x lr; 0.25:0.05) | plateau[:PATIENCE[:FACTOR]] (5:0.5) | burda (3^i passes at lr x 10^(-i/7), i = 0..7).", show_default=_default("lr_schedule"))] = None,
    adam_betas: Annotated[str | None, Opt(help="Adam/AdamW beta1,beta2 (default 0.9,0.999).", show_default=_default("adam_betas"))] = None,
    adam_eps: Annotated[float | None, Opt(help="Adam/AdamW epsilon (default 1e-8; Burda et al. use 1e-4).", show_default=_default("adam_eps"))] = None,
    weight_decay: Annotated[float | None, Opt(help="Weight decay (L2 for adam, adagrad and sgd; decoupled for adamw).", show_default=_default("weight_decay"))] = None,
    init: Annotated[str | None, Opt(help="default (torch's) | glorot (Glorot-uniform weights, zero biases) | normal:SD.", show_default=_default("init"))] = None,
    output_bias: Annotated[str | None, Opt(help="zero (default: as built) | data (the decoder's output bias at the likelihood's natural parameter of the training mean, e.g. the logit of the mean pixel: what lets a tanh decoder reach MNIST's background without saturating).", show_default=_default("output_bias"))] = None,
    grad_clip: Annotated[float | None, Opt(help="Clip the gradient norm to this (0: off).", show_default=_default("grad_clip"))] = None,
    seed: Annotated[int | None, Opt(help="Random seed (initialisation, data order, splits).", show_default=_default("seed"))] = None,
    threads: Annotated[int | None, Opt(help="CPU threads for torch (0: auto, every core other processes leave free, re-checked while training).", show_default=_default("threads"))] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).", show_default=_default("device"))] = None,
    precision: Annotated[str | None, Opt(help="fp32 | bf16 (bf16 autocast while training; validation and evaluation in fp32).", show_default=_default("precision"))] = None,
    checkpoint_every: Annotated[int | None, Opt(help="Write a checkpoint every N epochs (0: off).", show_default=_default("checkpoint_every"))] = None,
    checkpoint_minutes: Annotated[float | None, Opt(help="Also write one every T minutes, between steps (0: off).", show_default=_default("checkpoint_minutes"))] = None,
    save_best: Annotated[bool | None, Opt("--save-best/--no-save-best", help="Keep the best validation epoch's weights in best.safetensors.", show_default=_default("save_best"))] = None,
    max_bad_steps: Annotated[int | None, Opt(help="Stop after this many steps in a row with a non-finite loss or gradient.", show_default=_default("max_bad_steps"))] = None,
    log: Annotated[str | None, Opt("--log", help="Experiment trackers, comma-separated: tensorboard (into RUN/tensorboard) | mlflow (a file store in RUN/mlruns unless $MLFLOW_TRACKING_URI).", show_default=_default("log"))] = None,
    channels: Annotated[str | None, Opt(help="Conv architecture: channels per stride-2 layer, e.g. 32,64 (the image side must be divisible by 2^layers).", show_default=_default("channels"))] = None,
    latent_dim2: Annotated[int | None, Opt(help="Model hvae: size of the top latent layer z2 (0: half of --latent-dim).", show_default=_default("latent_dim2"))] = None,
    hidden2: Annotated[str | None, Opt(help="Model hvae: hidden sizes between z1 and z2, e.g. 100,100.", show_default=_default("hidden2"))] = None,
    classes: Annotated[int | None, Opt(help="Model cvae: number of classes (0: from the training labels).", show_default=_default("classes"))] = None,
    levels: Annotated[int | None, Opt(help="Logistic likelihood: grey levels of the data (256 for 8-bit images, 17 for digits).", show_default=_default("levels"))] = None,
    k: Annotated[int | None, Opt("--k", help="Objective iwae: importance samples per data point.", show_default=_default("k"))] = None,
    kl_warmup: Annotated[int | None, Opt(help="Epochs of linear KL warm-up from 0 to beta (0: none).", show_default=_default("kl_warmup"))] = None,
    free_bits: Annotated[float | None, Opt(help="Free bits: KL floor per latent dimension in nats (0: off).", show_default=_default("free_bits"))] = None,
    objective: Annotated[str | None, Opt(help="Training objective: elbo | iwae (the importance-weighted bound with --k samples).", show_default=_default("objective"))] = None,
    overwrite: Annotated[bool, Opt(help="Replace a run already in --out.")] = False,
    figures: Annotated[bool, Opt(help="Draw the figures at the end.")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar or messages.")] = False,
    resume: Annotated[str | None, Opt(metavar="PATH", help="Continue the run in this directory from its checkpoint (only budget settings such as --epochs may change).")] = None,
    dist_backend: DistBackend = "auto",
) -> None:
    """Train a VAE (or AE) and write a run directory with weights, metrics and figures.
    Under torchrun, data parallel: the batch size is the global minibatch, split across the
    processes; rank 0 alone writes the run directory (docs/distributed.md)."""
    flags = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    from vaekit.app.launch import process_group

    # the run directories are strings, not typer Paths: typer stats a Path while parsing, and
    # under torchrun only rank 0 may touch the run directory
    with process_group(dist_backend):
        _train(flags, None if out is None else Path(out), config, overwrite, figures, quiet,
               None if resume is None else Path(resume))


def _train(flags: dict, out: Path | None, config: Path | None, overwrite: bool, figures: bool, quiet: bool,
           resume: Path | None) -> None:
    from vaekit.app.config import Config, read_config_file
    from vaekit.app.launch import rank
    from vaekit.app.runs import train as run_training
    from vaekit.app.threads import tune_allocator

    quiet = quiet or rank() != 0
    preset = flags.get("preset")
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


Weights = Annotated[str, Opt(help="last (model.safetensors) | best (best.safetensors, the best validation epoch's weights).")]
Threads = Annotated[int, Opt(help="CPU threads for torch (0: auto, every core other processes leave free).")]
Overwrite = Annotated[bool, Opt(help="Replace output files that already exist.")]


@app.command()
def evaluate(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Other data to score (default: the run's own). A table needs no label column unless the model is conditional.")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: test if the data has one, else validation).")] = None,
    importance_samples: Annotated[int, Opt(help="Importance samples K per example for the log-likelihood (published MNIST numbers use 5000).")] = 1000,
    iwae_k: Annotated[int | None, Opt(help="k of the reported IWAE bound L_k (default 50, or K if smaller).")] = None,
    batch_size: Annotated[int, Opt(help="Examples per evaluation batch (memory does not grow with K).")] = 1000,
    seed: Annotated[int, Opt(help="Seed for the Monte-Carlo draws.")] = 0,
    per_example: Annotated[Path | None, Opt(help="Write every example's ELBO and log-likelihood (anomaly scores) to FILE.csv or FILE.npy, with its row in the file (row), image file (file) and class name (label_name).")] = None,
    gap_decomposition: Annotated[bool, Opt(help="Split the gap into amortisation and approximation gaps by fitting a Gaussian to each example (slower).")] = False,
    local_steps: Annotated[int, Opt(help="Adam steps per example's Gaussian for --gap-decomposition.")] = 200,
    curve: Annotated[bool, Opt(help="Draw the log-likelihood estimate against K, with the ELBO, into likelihood_curve.png in the run directory.")] = False,
    save: Annotated[bool, Opt(help="Store the result as evaluation-SPLIT.json (evaluation-SPLIT-best.json for --weights best) in the run directory (the run's own data only).")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    binarize: Annotated[str | None, Opt(help="Binarisation protocol for the data (default: the run's own, from its config).")] = None,
    data_dir: Annotated[str | None, Opt(help="Folder holding the dataset's official files (default: the run's).")] = None,
    mirror: Annotated[str | None, Opt(help="Base URL(s) to download a published dataset from.")] = None,
    samples: Annotated[int | None, Opt(help="Same as --importance-samples: the draws per example behind every Monte-Carlo figure, the ELBO's included.")] = None,
    threads: Annotated[int, Opt(help="CPU threads for torch (0: auto, every core other processes leave free, re-checked while scoring).")] = 0,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
    weights: Weights = "last",
    overwrite: Annotated[bool, Opt(help="Replace an existing --per-example file.")] = False,
    dist_backend: DistBackend = "auto",
) -> None:
    """Score a trained model: ELBO, importance-sampled log-likelihood, the gap, active units
    and mutual information; per-example means in nats, each with its Monte-Carlo standard error.
    Under torchrun the batches are shared out and the results gathered exactly: the numbers
    are one process's (docs/distributed.md)."""
    args = {k: v for k, v in locals().items() if k != "dist_backend"}
    from vaekit.app.launch import process_group

    with process_group(dist_backend):
        _evaluate(**args)


def _evaluate(run_dir, data, split, importance_samples, iwae_k, batch_size, seed, per_example, gap_decomposition,
              local_steps, curve, save, quiet, as_json, binarize, data_dir, mirror, samples, threads, device,
              weights, overwrite) -> None:
    from vaekit.app.data import same_data
    from vaekit.app.data.standardize import to_data_units
    from vaekit.app.launch import rank
    from vaekit.app.outputs import output_path, source_columns
    from vaekit.app.threads import ThreadPolicy, tune_allocator
    from vaekit.devices import forked_rng, model_device, resolve_device
    from vaekit.distributed import local_device
    from vaekit.evaluation import check_samples, format_table, share, summarise, write_per_example
    from vaekit.evaluation import per_example as score_examples

    main = rank() == 0
    quiet = quiet or not main
    device = str(local_device(resolve_device(device)))
    overrides = {"binarize": binarize, "data_dir": data_dir, "mirror": mirror}
    _positive("--batch-size", batch_size)
    _positive("--local-steps", local_steps)
    if samples is not None:
        _positive("--samples", samples)
        importance_samples = samples
    k, iwae_k = check_samples(importance_samples, iwae_k)
    if per_example is not None:
        output_path(per_example, run_dir, "", (".csv", ".npy"), overwrite)
    _threads(threads)
    model, config, dataset, split, epoch = _model_and_data(run_dir, data, split, overrides, device, weights)
    tune_allocator()  # chunks free and re-allocate tens of MB: keep those pages (vaekit.app.threads)
    policy = ThreadPolicy(threads, quiet=quiet or as_json)
    labels = _labels(model, dataset)
    total = share(len(dataset), batch_size, k) * (2 if gap_decomposition else 1)
    with forked_rng(model_device(model), seed), _progress(quiet, f"evaluating (K = {k})", total) as advance:
        scores = score_examples(
            model, dataset.x, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
            curve=curve, gap_decomposition=gap_decomposition, local_steps=local_steps,
            labels=labels, on_progress=lambda n: (advance(n), policy.check()),
        )
        result = {"split": split, "seed": seed, **summarise(
            model, dataset.x, scores, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
            labels=labels)}
    result.update(weights=weights, epoch=epoch)
    if not main:
        return  # rank 0 writes and prints
    result, scores, units = to_data_units(result, scores, dataset)  # a standardised run: the data's own units
    notes = [] if units is None else [units]
    if per_example is not None:
        write_per_example(scores, per_example, dataset.labels, extra=source_columns(dataset))
        notes.append(f"wrote per-example scores to {per_example}")
    if curve and result.get("curve"):
        from vaekit import plots

        notes.append(_store_in_run(run_dir / "likelihood_curve.png",
                                   lambda path: plots.likelihood_curve_figure(result, path), "the curve"))
    if save and same_data(data, config):
        from vaekit.rundir import write_json

        name = f"evaluation-{split}.json" if weights == "last" else f"evaluation-{split}-{weights}.json"
        notes.append(_store_in_run(run_dir / name, lambda path: write_json(path, result), "the result"))
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
    output: Annotated[Path | None, Opt("--output", "-o", help="FILE.png (a grid of images; for rows of features, each feature's histogram), FILE.npy (the array) or FILE.csv (rows of features, in the data's units, headed by the column names). Default: samples-SAMPLER.png in the run directory.")] = None,
    seed: Annotated[int, Opt(help="Seed for the prior draws.")] = 0,
    draw: Annotated[bool, Opt(help="Draw x ~ p(x|z) instead of showing the mean E[x|z] (for synthetic table rows you usually want draws).")] = False,
    label: Annotated[str | None, Opt(help="Conditional model: the class to draw, by index or by name (default: all classes in turn).")] = None,
    sampler: Annotated[str, Opt(help="prior (z ~ p(z)) | gmm (z ~ a Gaussian mixture fitted to the training posterior means).")] = "prior",
    components: Annotated[int, Opt(help="Sampler gmm: mixture components.")] = 10,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Draw samples from the prior (or an ex-post Gaussian mixture) and decode them."""
    from vaekit.app.data import read_run_data
    from vaekit.app.outputs import class_index, output_path
    from vaekit.app.runs import load_run

    _positive("-n", n)
    if sampler not in ("prior", "gmm"):
        raise VaekitError(f"--sampler must be 'prior' or 'gmm', got '{sampler}'")
    _positive("--components", components)
    _threads(threads)
    name = f"samples-{sampler}" + ("" if label is None else "-" + re.sub(r"[^\w.-]", "_", label))
    output = output_path(output, run_dir, f"{name}.png", (".png", ".npy", ".csv"), overwrite)
    model, config = load_run(run_dir, weights, device=device)
    record = read_run_data(run_dir)
    _check_table_output(output, model)
    y = None
    if label is not None:
        from vaekit.model import num_classes

        classes = num_classes(model)
        if not classes:
            raise VaekitError(f"--label needs a conditional model (--model cvae); {run_dir} is '{config.model}'")
        y = class_index(label, classes, record.get("classes"))
    from vaekit.devices import forked_rng, model_device
    from vaekit.sampling import decode_latents

    with _thread_policy(threads), forked_rng(model_device(model), seed):
        if sampler == "gmm":
            from vaekit.app.runs import fit_gmm_for_run
            from vaekit.sampling import sample_gmm_latents

            gmm = fit_gmm_for_run(model, config, components, seed, run_dir)
            images = decode_latents(model, sample_gmm_latents(gmm, n, seed), y, mean=not draw)
            title = f"{n} samples from {run_dir}, z from a {components}-component mixture"
        else:
            images = decode_latents(model, model.prior_draws(n), y, mean=not draw)
            title = f"{n} samples from {run_dir}"
    if y is not None:
        title += f", class {label}"
    if images.dim() == 2 and output.suffix.lower() == ".png":
        from vaekit import plots

        what = "draws x ~ p(x|z)" if draw else "means E[x|z]"
        shown = _training_rows(config, run_dir)
        plots.samples_figure_features(model, shown, output, record.get("features"), samples=images,
                                      data_units=_data_units(run_dir), title=f"{title}: {what}")
        print(f"wrote {output}")
        return
    _write_rows(_original_units(images, run_dir), output, title, record.get("features"))


@app.command()
def reconstruct(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to reconstruct (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all.")] = None,
    n: Annotated[int | None, Opt("-n", "--n", help="How many examples, the first n of the split (default: 10 images, or every row of a table).")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", help="FILE.png (originals above reconstructions; for rows of features, each feature's reconstruction against its original), FILE.npy or FILE.csv (rows of features in the data's units, with each row's place in its file). Default: reconstructions-SPLIT.png in the run directory.")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Reconstruct examples through the posterior mean: E[x | z = μ(x)]."""
    from vaekit.app.data import read_run_data
    from vaekit.app.outputs import default_name, output_path, source_columns
    from vaekit.sampling import reconstruct as reconstruct_batch

    if n is not None:
        _positive("-n", n)
    _threads(threads)
    if output is not None:
        output_path(output, run_dir, "", (".png", ".npy", ".csv"), overwrite)
    model, _, dataset, split, _ = _model_and_data(run_dir, data, split, None, device, weights)
    output = output_path(output, run_dir, default_name("reconstructions", data, split, ".png"),
                         (".png", ".npy", ".csv"), overwrite)
    _check_table_output(output, model)
    labels = _labels(model, dataset)
    import torch

    count = n or (10 if dataset.is_image else len(dataset))
    shown = dataset.subset(torch.arange(min(count, len(dataset))))
    with _thread_policy(threads):
        recon = reconstruct_batch(model, shown.x, None if labels is None else labels[: len(shown)])
    suffix = output.suffix.lower()
    if suffix == ".csv":
        from vaekit.evaluation import write_table

        features = _feature_names(recon.shape[1], read_run_data(run_dir).get("features"))
        values = _original_units(recon, run_dir).double().numpy()
        ids = source_columns(shown)
        write_table(output, {"row": ids.pop("row"), **dict(zip(features, values.T, strict=True)), **ids},
                    float_format="%.8g")
        print(f"wrote {len(values)} reconstructed rows to {output}")
    elif suffix == ".npy":
        _write_rows(_original_units(recon, run_dir), output, "")
    else:
        from vaekit import plots

        plots.reconstructions_figure(model, shown.x, output, n=len(shown),
                                     labels=None if labels is None else labels[: len(shown)],
                                     feature_names=read_run_data(run_dir).get("features"),
                                     data_units=_data_units(run_dir))
        print(f"wrote {output}")


@app.command()
def encode(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to encode (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: all).")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", help="FILE.npy (means; log-variances in FILE.logvar.npy), FILE.npz or FILE.csv (with each example's row in its file, image file and class name). Default: latents-SPLIT.npy in the run directory.")] = None,
    batch_size: Annotated[int, Opt(help="Examples per batch.")] = 1000,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write every example's posterior mean μ(x) and log-variance log σ²(x)."""
    import numpy as np
    import torch

    from vaekit.app.outputs import default_name, output_path, source_columns
    from vaekit.evaluation import write_table
    from vaekit.rundir import write_output
    from vaekit.sampling import encode_posterior

    _positive("--batch-size", batch_size)
    _threads(threads)
    suffixes, companions = (".npy", ".npz", ".csv"), (".logvar.npy",)
    if output is not None:
        output_path(output, run_dir, "", suffixes, overwrite, companions)
    model, _, dataset, split, _ = _model_and_data(run_dir, data, split or "all", None, device, weights)
    output = output_path(output, run_dir, default_name("latents", data, split, ".npy"), suffixes, overwrite,
                         companions)
    labels_in = _labels(model, dataset)
    mus, logvars = [], []
    with _thread_policy(threads):
        for i in range(0, len(dataset), batch_size):
            q = encode_posterior(model, dataset.x[i : i + batch_size],
                                 None if labels_in is None else labels_in[i : i + batch_size])
            mus.append(q.mean.cpu())
            logvars.append(torch.log(q.variance).cpu())
    mu = torch.cat(mus).numpy()
    logvar = torch.cat(logvars).numpy()
    labels = None if dataset.labels is None else dataset.labels.numpy()
    ids = source_columns(dataset)
    suffix = output.suffix.lower()
    if suffix == ".npy":
        write_output(output, lambda f: np.save(f, mu))
        write_output(output.with_suffix(".logvar.npy"), lambda f: np.save(f, logvar))
    elif suffix == ".npz":
        arrays = {"mu": mu, "logvar": logvar}
        if labels is not None:
            arrays["labels"] = labels
        arrays.update({k: np.asarray(v) for k, v in ids.items()})
        write_output(output, lambda f: np.savez(f, **arrays))
    else:
        d = mu.shape[1]
        columns = {**{f"mu_{i + 1}": mu[:, i] for i in range(d)}, **{f"logvar_{i + 1}": logvar[:, i] for i in range(d)}}
        if labels is not None:
            columns["label"] = labels
        write_table(output, {**columns, **ids}, float_format="%.8g")
    print(f"wrote {len(mu)} posterior means ({mu.shape[1]}-D) to {output}")


@app.command()
def plot(
    run_dir: RunDir,
    output: Annotated[Path | None, Opt("--output", "-o", help="Folder for the figures (default: the run directory, whose figures are redrawn in place).")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")] = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Annotated[bool, Opt(help="Replace figures already in another --output folder.")] = False,
) -> None:
    """(Re)draw a run's figures from its weights and metrics."""
    from vaekit import plots
    from vaekit.app.data import read_run_data, run_splits
    from vaekit.app.runs import load_run
    from vaekit.rundir import FIGURES, RunDirectory, read_metrics, remove_temporary_files

    _threads(threads)
    RunDirectory(run_dir).check_exists()
    folder = run_dir if output is None else output
    if not folder.is_dir():
        raise VaekitError(f"output folder {folder} does not exist")
    if folder.resolve() != run_dir.resolve() and not overwrite:
        there = [name for name in FIGURES if (folder / name).exists()]
        if there:
            raise VaekitError(f"{folder} already holds {', '.join(there[:3])}; pass --overwrite to replace them")
    model, config = load_run(run_dir, weights, device=device)
    splits = run_splits(config, run_dir=run_dir)
    remove_temporary_files(run_dir)  # what killed writers left in the run
    train, shown = splits["train"], splits.get("validation") or splits.get("test") or splits["train"]
    with _thread_policy(threads):
        paths = plots.draw_all(folder, model, train.x, train.labels, shown.x, shown.labels, read_metrics(run_dir),
                               class_names=train.classes, feature_names=read_run_data(run_dir).get("features"),
                               data_units=_data_units(run_dir))
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
                    device: str = "cpu", weights: str = "last"):
    """(model, config, dataset, split, the weights' epoch) for a command that reads data."""
    from vaekit.app.data import same_data, select_default_split, select_split
    from vaekit.app.runs import load_run_epoch

    model, config, epoch = load_run_epoch(run_dir, weights, device=device)
    if overrides and any(v is not None for v in overrides.values()):
        config = config.override(overrides, source="command line")
    own = same_data(data, config)
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
    return model, config, dataset, split, epoch


def _threads(threads: int) -> None:
    if threads < 0:
        raise VaekitError(f"--threads must be 0 (auto) or more, got {threads}")


def _thread_policy(threads: int):
    """The CPU thread policy for one command's work (restored afterwards)."""
    from vaekit.app.threads import ThreadPolicy

    return ThreadPolicy(threads, quiet=True)


def _check_table_output(output: Path, model) -> None:
    if output.suffix.lower() == ".csv" and len(model.event_shape) != 1:
        raise VaekitError(f"{output}: CSV output is for rows of features ([N, D] data); this model's data are "
                          f"shaped {list(model.event_shape)}: write .png or .npy")


def _feature_names(d: int, names: list[str] | None) -> list[str]:
    from vaekit.plots import feature_names_for

    return feature_names_for(d, names)


def _training_rows(config, run_dir: Path, limit: int = 2000):
    """The first rows of the run's training split, as the model saw them (for comparisons)."""
    from vaekit.app.data import run_splits

    train = run_splits(config, quiet=True, run_dir=run_dir)["train"]
    return train.x[:limit]


def _data_units(run_dir: Path):
    """The map from the model's values to the data's units (undoing a standardisation), or None."""
    from vaekit.app.data import recorded_standardization

    st = recorded_standardization(run_dir)
    return None if st is None else st.invert


def _store_in_run(path: Path, write, what: str) -> str:
    """Write ``path`` into a run directory (clearing what killed writers left there first);
    a run that cannot be written (read-only, someone else's) gets a warning, not a failure:
    the printed result is what counts."""
    from vaekit.rundir import remove_temporary_files

    remove_temporary_files(path.parent)
    try:
        write(path)
    except VaekitError as err:
        return f"warning: could not store {what} in the run: {err}"
    return f"stored {what} in {path}" if what == "the result" else f"wrote {path}"


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


def _write_rows(x, output: Path, title: str, features: list[str] | None = None) -> None:
    """Images or rows of features to .png (a grid), .npy, or .csv (rows headed by the
    column names)."""
    import numpy as np

    suffix = output.suffix.lower()
    if suffix == ".npy":
        from vaekit.rundir import write_output

        write_output(output, lambda f: np.save(f, x.numpy()))
    elif suffix == ".csv":
        from vaekit.evaluation import write_table

        names = _feature_names(x.shape[1], features)
        write_table(output, dict(zip(names, x.double().numpy().T, strict=True)), float_format="%.8g")
    else:
        from vaekit.plots import images_figure

        images_figure(x, output, title)
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


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise VaekitError(f"{name} must be at least 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 success, 2 user error, 130 interrupted)."""
    try:
        app(args=argv, prog_name="vaekit")
    except SystemExit as done:  # typer's normal way out, including usage errors
        interruption = _interruption(done)
        if interruption is not None:  # typer turns Ctrl-C (and torchrun's SIGTERM) into exit 130
            from vaekit.app.launch import settle

            settle()
            return _report(interruption)
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException as err:
        from vaekit.app.launch import settle

        settle()
        return _report(err)
    return 0


def _interruption(done: SystemExit) -> KeyboardInterrupt | None:
    """The interruption behind typer's exit, if that is what it was."""
    err: BaseException | None = done
    for _ in range(4):
        err = err.__cause__ or err.__context__
        if err is None or isinstance(err, KeyboardInterrupt):
            return err
    return None


def _report(err: BaseException) -> int:
    """Print what ended the command (one line); return the exit status."""
    if isinstance(err, KeyboardInterrupt) and isinstance(err.__context__, VaekitError):
        err = err.__context__  # a termination request cut short the report of an error: report it
    if isinstance(err, Interrupted):
        _say(str(err), err)
        return err.exit_code
    if isinstance(err, VaekitError):
        _say(f"error: {err}", err)
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        _say(str(err) or "interrupted")
        return getattr(err, "exit_code", 130)
    if isinstance(err, OSError):  # the machine's problem, not a bug: one line, no traceback
        where = f"{err.filename}: " if err.filename else ""
        _say(f"error: {where}{err.strerror or err}")
        return 2
    from vaekit.distributed import lost_peer, reason

    if isinstance(err, RuntimeError) and lost_peer(err):
        _say(f"error: another process of this torchrun job is gone ({reason(err)})")
        return 2
    raise err


def _say(message: str, err: BaseException | None = None) -> None:
    """Print on stderr: rank 0 everything, another rank only what is its own (an error every
    rank raised alike, or an interruption, is rank 0's to report)."""
    from vaekit.app.launch import rank

    here = rank()
    if here == 0:
        print(message, file=sys.stderr)
    elif not (getattr(err, "shared", False) or isinstance(err, Interrupted)):
        print(f"[rank {here}] {message}", file=sys.stderr)


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
