"""``vaekit reconstruct``: examples through the posterior mean."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from vaekit.app.commands.common import (
    data_units,
    labels_of,
    model_and_data,
    original_units,
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
from vaekit.app.outputs import check_table_output, write_rows


def command(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Data to reconstruct (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all.")] = None,
    n: Annotated[int | None, Opt("-n", "--n", help="How many examples, the first n of the split (default: 10 images, or every row of a table).")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", "--out", help="FILE.png (originals above reconstructions; for rows of features, each feature's reconstruction against its original), FILE.npy or FILE.csv (rows of features in the data's units, with each row's place in its file). Default: reconstructions-SPLIT.png in the run directory.")] = None,
    device: Device = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Overwrite = False,
) -> None:
    """Reconstruct examples through the posterior mean: E[x | z = μ(x)]."""
    from vaekit.app.data import read_run_data
    from vaekit.app.outputs import default_name, output_path, source_columns
    from vaekit.sampling import reconstruct as reconstruct_batch

    if n is not None:
        positive("-n", n)
    check_threads(threads)
    if output is not None:
        output_path(output, run_dir, "", (".png", ".npy", ".csv"), overwrite)
    model, _, dataset, split, _ = model_and_data(run_dir, data, split, None, device, weights)
    output = output_path(output, run_dir, default_name("reconstructions", data, split, ".png"),
                         (".png", ".npy", ".csv"), overwrite)
    check_table_output(output, model)
    labels = labels_of(model, dataset)
    import torch

    count = n or (10 if dataset.is_image else len(dataset))
    shown = dataset.subset(torch.arange(min(count, len(dataset))))
    with thread_policy(threads):
        recon = reconstruct_batch(model, shown.x, None if labels is None else labels[: len(shown)])
    suffix = output.suffix.lower()
    if suffix == ".csv":
        from vaekit.evaluation import write_table
        from vaekit.plots import feature_names_for

        features = feature_names_for(recon.shape[1], read_run_data(run_dir).get("features"))
        values = original_units(recon, run_dir).double().numpy()
        ids = source_columns(shown)
        write_table(output, {"row": ids.pop("row"), **dict(zip(features, values.T, strict=True)), **ids},
                    float_format="%.8g")
        print(f"wrote {len(values)} reconstructed rows to {output}")
    elif suffix == ".npy":
        write_rows(original_units(recon, run_dir), output, "")
    else:
        from vaekit import plots

        plots.reconstructions_figure(model, shown.x, output, n=len(shown),
                                     labels=None if labels is None else labels[: len(shown)],
                                     feature_names=read_run_data(run_dir).get("features"),
                                     data_units=data_units(run_dir))
        print(f"wrote {output}")
