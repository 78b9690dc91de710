"""``vaekit sample``: decode draws from the prior or an ex-post Gaussian mixture."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from vaekit.app.commands.common import (
    data_units,
    original_units,
    thread_policy,
    training_rows,
)
from vaekit.app.commands.options import (
    Device,
    Opt,
    Overwrite,
    RunDir,
    Threads,
    Weights,
    check_threads,
    positive,
)
from vaekit.app.outputs import check_table_output, write_rows
from vaekit.errors import VaekitError


def command(
    run_dir: RunDir,
    n: Annotated[int, Opt("-n", "--n", help="How many samples.")] = 64,
    output: Annotated[Path | None, Opt("--output", "-o", "--out", help="FILE.png (a grid of images; for rows of features, each feature's histogram), FILE.npy (the array) or FILE.csv (rows of features, in the data's units, headed by the column names). Default: samples-SAMPLER.png in the run directory.")] = None,
    seed: Annotated[int, Opt(help="Seed for the prior draws.")] = 0,
    draw: Annotated[bool, Opt(help="Draw x ~ p(x|z) instead of showing the mean E[x|z] (for synthetic table rows you usually want draws).")] = False,
    label: Annotated[str | None, Opt(help="Conditional model: the class to draw, by index or by name (default: all classes in turn).")] = None,
    sampler: Annotated[str, Opt(help="prior (z ~ p(z)) | gmm (z ~ a Gaussian mixture fitted to the training posterior means).")] = "prior",
    components: Annotated[int, Opt(help="Sampler gmm: mixture components.")] = 10,
    device: Device = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Draw samples from the prior (or an ex-post Gaussian mixture) and decode them."""
    from vaekit.app.data import read_run_data
    from vaekit.app.outputs import class_index, output_path
    from vaekit.app.runs import load_run

    positive("-n", n)
    if sampler not in ("prior", "gmm"):
        raise VaekitError(f"--sampler must be 'prior' or 'gmm', got '{sampler}'")
    positive("--components", components)
    check_threads(threads)
    name = f"samples-{sampler}" + ("" if label is None else "-" + re.sub(r"[^\w.-]", "_", label))
    output = output_path(output, run_dir, f"{name}.png", (".png", ".npy", ".csv"), overwrite)
    model, config = load_run(run_dir, weights, device=device)
    record = read_run_data(run_dir)
    check_table_output(output, model)
    y = None
    if label is not None:
        from vaekit.model import num_classes

        classes = num_classes(model)
        if not classes:
            raise VaekitError(f"--label needs a conditional model (--model cvae); {run_dir} is '{config.model}'")
        y = class_index(label, classes, record.get("classes"))
    from vaekit.devices import forked_rng, model_device
    from vaekit.sampling import decode_latents

    with thread_policy(threads), forked_rng(model_device(model), seed):
        if sampler == "gmm":
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
        shown = training_rows(config, run_dir)
        plots.samples_figure_features(model, shown, output, record.get("features"), samples=images,
                                      data_units=data_units(run_dir), title=f"{title}: {what}")
        print(f"wrote {output}")
        return
    write_rows(original_units(images, run_dir), output, title, record.get("features"))


def fit_gmm_for_run(model, config, components: int = 10, seed: int = 0, run_dir=None):
    """:func:`vaekit.sampling.fit_gmm` on a run's training split, as the model saw it in
    training (the data treatment recorded in ``run_dir`` applied; under dynamic
    binarisation one seeded binary draw of every training image)."""
    import torch

    from vaekit.app.data import run_splits
    from vaekit.app.runs import labels_for
    from vaekit.sampling import fit_gmm

    train_set = run_splits(config, quiet=True, run_dir=run_dir)["train"]
    draws = torch.Generator().manual_seed(seed) if config.binarization.dynamic else None
    return fit_gmm(model, train_set.x, components, labels_for(model, train_set), seed, draws)
