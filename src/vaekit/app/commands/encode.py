"""``vaekit encode``: every example's posterior mean and log-variance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from vaekit.app.commands.common import (
    labels_of,
    model_and_data,
    thread_policy,
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


def command(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to encode (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: all).")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", "--out", help="FILE.npy (means; log-variances in FILE.logvar.npy), FILE.npz or FILE.csv (with each example's row in its file, image file and class name). Default: latents-SPLIT.npy in the run directory.")] = None,
    batch_size: Annotated[int, Opt(help="Examples per batch.")] = 1000,
    device: Device = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write every example's posterior mean μ(x) and log-variance log σ²(x) (for a flow
    posterior: the base mean pushed through the flow, and the log of its draws' variance)."""
    from vaekit.app.outputs import default_name, output_path, source_columns, write_latents
    from vaekit.sampling import posterior_parameters

    positive("--batch-size", batch_size)
    check_threads(threads)
    suffixes, companions = (".npy", ".npz", ".csv"), (".logvar.npy",)
    if output is not None:
        output_path(output, run_dir, "", suffixes, overwrite, companions)
    model, _, dataset, split, _ = model_and_data(run_dir, data, split or "all", None, device, weights)
    output = output_path(output, run_dir, default_name("latents", data, split, ".npy"), suffixes, overwrite,
                         companions)
    with thread_policy(threads):
        mu, logvar = posterior_parameters(model, dataset.x, labels_of(model, dataset), batch_size)
    labels = None if dataset.labels is None else dataset.labels.numpy()
    write_latents(output, mu.numpy(), logvar.numpy(), labels, source_columns(dataset))
    print(f"wrote {len(mu)} posterior points ({mu.shape[1]}-D) to {output}")
