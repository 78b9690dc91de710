"""``vaekit evaluate``: score a trained model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from vaekit.app.commands.common import (
    labels_of,
    model_and_data,
)
from vaekit.app.commands.options import (
    Device,
    DistBackend,
    Opt,
    RunDir,
    Weights,
    check_threads,
    positive,
)
from vaekit.app.outputs import store_in_run


def command(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Other data to score (default: the run's own). A table needs no label column unless the model is conditional.")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all (default: test if the data has one, else validation).")] = None,
    importance_samples: Annotated[int, Opt(help="Importance samples K: draws of z per example behind the log-likelihood estimate and every other Monte-Carlo figure, the ELBO's included (published MNIST numbers use K = 5000; not train's --samples, the draws per training step).")] = 1000,
    iwae_k: Annotated[int | None, Opt(help="k of the reported IWAE bound L_k (default 50, or K if smaller).")] = None,
    batch_size: Annotated[int, Opt(help="Examples per evaluation batch (memory does not grow with K).")] = 1000,
    seed: Annotated[int, Opt(help="Seed for the Monte-Carlo draws.")] = 0,
    per_example: Annotated[Path | None, Opt(help="Write every example's ELBO and log-likelihood (anomaly scores) to FILE.csv or FILE.npy, with its row in the file (row), image file (file) and class name (label_name).")] = None,
    limit: Annotated[int | None, Opt(help="Score only the split's first N examples (default: all); the result says how many (n), and is saved as evaluation-SPLIT-firstN.json.")] = None,
    gap_decomposition: Annotated[bool, Opt(help="Split the gap into amortisation and approximation gaps by refitting the posterior's own family (its head's parameters, or a diagonal Gaussian) to each example (slower: about three full scorings).")] = False,
    local_steps: Annotated[int, Opt(help="Adam steps per example's refitted posterior for --gap-decomposition.")] = 200,
    mi_examples: Annotated[int, Opt(help="Draws (one per example) behind the mutual information I_q(x; z), each scored under every example's posterior; 0 skips it (its cost grows as this × the examples scored, and an IAF posterior's density at other examples' draws takes one pass per latent dimension).")] = 1000,
    curve: Annotated[bool, Opt(help="Draw the log-likelihood estimate against K, with the ELBO, into likelihood_curve.png in the run directory.")] = False,
    save: Annotated[bool, Opt(help="Store the result as evaluation-SPLIT.json (evaluation-SPLIT-best.json for --weights best) in the run directory (the run's own data only).")] = True,
    resume: Annotated[bool, Opt(help="Keep the scores of finished batches while a stored evaluation runs (evaluation-SPLIT.partial.safetensors), and go on from them after an interruption when the weights, data and settings are the same: the result is the uninterrupted one. --no-resume starts over.")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    binarize: Annotated[str | None, Opt(help="Binarisation protocol for the data (default: the run's own, from its config).")] = None,
    data_dir: Annotated[str | None, Opt(help="Folder holding the dataset's official files (default: the run's).")] = None,
    mirror: Annotated[str | None, Opt(help="Base URL(s) to download a published dataset from.")] = None,
    samples: Annotated[int | None, Opt(hidden=True, help="Same as --importance-samples (its older name, kept working).")] = None,
    threads: Annotated[int, Opt(help="CPU threads for torch (0: auto, every core other processes leave free, re-checked while scoring).")] = 0,
    device: Device = "auto",
    weights: Weights = "last",
    overwrite: Annotated[bool, Opt(help="Replace an existing --per-example file.")] = False,
    dist_backend: DistBackend = "auto",
) -> None:
    """Score a trained model: ELBO, importance-sampled log-likelihood, the gap, active units
    and mutual information; per-example means in nats, each with its Monte-Carlo standard error.
    Under torchrun the batches are shared out and the results gathered exactly: the numbers
    are one process's (docs/distributed.md)."""
    from vaekit import distributed
    from vaekit.app.console import progress
    from vaekit.app.data import same_data
    from vaekit.app.factories import check_evaluation_size
    from vaekit.app.launch import process_group, rank
    from vaekit.app.outputs import output_path, source_columns
    from vaekit.app.partial import begin, partial_path
    from vaekit.app.threads import ThreadPolicy, tune_allocator
    from vaekit.devices import forked_rng, model_device, resolve_device
    from vaekit.distributed import local_device
    from vaekit.evaluation import (
        check_samples,
        examples_per_batch,
        format_table,
        share,
        summarise,
        write_per_example,
    )
    from vaekit.evaluation import per_example as score_examples

    with process_group(dist_backend):  # under torchrun the batches are shared out
        main = rank() == 0
        quiet = quiet or not main
        device = str(local_device(resolve_device(device)))
        overrides = {"binarize": binarize, "data_dir": data_dir, "mirror": mirror}
        positive("--batch-size", batch_size)
        positive("--local-steps", local_steps)
        if samples is not None:
            positive("--samples", samples)
            importance_samples = samples
        k, iwae_k = check_samples(importance_samples, iwae_k)
        check_evaluation_size(k, batch_size)
        if per_example is not None:
            output_path(per_example, run_dir, "", (".csv", ".npy"), overwrite)
        if limit is not None:
            positive("--limit", limit)
        if mi_examples < 0:
            from vaekit.errors import VaekitError

            raise VaekitError(f"--mi-examples must be 0 (skip the mutual information) or more, got {mi_examples}")
        check_threads(threads)
        model, config, dataset, split, epoch = model_and_data(run_dir, data, split, overrides, device, weights)
        first = limit if limit is not None and limit < len(dataset) else None  # None: the whole split
        if first is not None:
            import torch

            dataset = dataset.subset(torch.arange(first))
        tune_allocator()  # chunks free and re-allocate tens of MB: keep those pages (vaekit.app.threads)
        policy = ThreadPolicy(threads, quiet=quiet or as_json)
        labels = labels_of(model, dataset)
        total = share(len(dataset), batch_size, k) * (2 if gap_decomposition else 1)
        parts = [split, *([] if weights == "last" else [weights]), *([] if first is None else [f"first{first}"])]
        stored = run_dir / f"evaluation-{'-'.join(parts)}.json" if save and same_data(data, config) else None
        partial, scored = None, None
        if stored is not None and resume and distributed.current() is None:
            partial, scored = begin(partial_path(stored), {
                "split": split, "weights": weights, "importance_samples": k, "iwae_k": iwae_k, "seed": seed,
                "batch_size": examples_per_batch(batch_size, k), "curve": curve,
                "gap_decomposition": gap_decomposition, "local_steps": local_steps}, model, dataset.x, labels)
            if partial.note and not quiet:
                print(partial.note, file=sys.stderr)
        with forked_rng(model_device(model), seed), progress(quiet, f"evaluating (K = {k})", total) as advance:
            try:
                scores = score_examples(
                    model, dataset.x, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
                    curve=curve, gap_decomposition=gap_decomposition, local_steps=local_steps,
                    labels=labels, on_progress=lambda n: (advance(n), policy.check()),
                    scored=scored, on_batch=None if partial is None else partial.on_batch,
                )
            except KeyboardInterrupt:
                if partial is None:
                    raise
                raise KeyboardInterrupt(f"interrupted: {partial.interrupted()}") from None
            result = {"split": split, "seed": seed, **summarise(
                model, dataset.x, scores, importance_samples=k, iwae_k=iwae_k, batch_size=batch_size,
                mi_examples=mi_examples, labels=labels)}
        result.update(weights=weights, epoch=epoch)
        if not main:
            return  # rank 0 writes and prints
        from vaekit.app.data.standardize import to_data_units

        result, scores, units = to_data_units(result, scores, dataset)  # a standardised run: the data's own units
        notes = [] if units is None else [units]
        if per_example is not None:
            write_per_example(scores, per_example, dataset.labels, extra=source_columns(dataset))
            notes.append(f"wrote per-example scores to {per_example}")
        if curve and result.get("curve"):
            from vaekit import plots

            notes.append(store_in_run(run_dir / "likelihood_curve.png",
                                       lambda path: plots.likelihood_curve_figure(result, path), "the curve"))
        if stored is not None:
            from vaekit.rundir import write_json

            notes.append(store_in_run(stored, lambda path: write_json(path, result), "the result"))
            partial_path(stored).unlink(missing_ok=True)  # the result holds what it kept (or replaces it)
        if as_json:
            print(json.dumps(result))
        else:
            print(format_table(result))
        for note in notes:
            print(note, file=sys.stderr)
