"""The training loop: minibatch stochastic optimisation of the objective with Adam.

Data live in memory as one tensor and are batched by index (no per-item Python work);
every epoch appends a line to ``metrics.jsonl`` and rewrites ``model.safetensors``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from vaekit import runs
from vaekit.config import Config, parse_binarize
from vaekit.data import Dataset, run_splits, write_run_data
from vaekit.data.lazy import value_range
from vaekit.errors import VaekitError
from vaekit.model import build_model
from vaekit.objectives import elbo_terms, training_loss

TERMS = ("elbo", "reconstruction", "kl")


def train(
    config: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    figures: bool = True,
) -> Path:
    """Train the model ``config`` describes; write the run directory ``out`` and return it."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    splits = run_splits(config, quiet=quiet)
    train_set, val_set = splits["train"], splits["validation"]
    check_data(train_set, config, quiet)
    run_dir = prepare_run_dir(out, overwrite)

    torch.manual_seed(config.seed)
    model = build_model(config, train_set.event_shape)
    optimizer = make_optimizer(model, config)
    order = torch.Generator().manual_seed(config.seed)
    draws = torch.Generator().manual_seed(config.seed + 1)
    runs.save(model, config, run_dir)
    write_run_data(run_dir, config, splits)
    (run_dir / runs.METRICS).write_text("")

    with _progress(quiet) as progress:
        steps_per_epoch = -(-len(train_set) // config.batch_size)
        task = progress.add_task("training", total=config.epochs * steps_per_epoch)
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            model.train()
            train_stats = run_epoch(
                model, optimizer, train_set.x, config, order, draws,
                on_step=lambda loss, e=epoch: progress.update(
                    task, advance=1, description=f"epoch {e}/{config.epochs}  -ELBO {loss:.2f}"
                ),
            )
            seconds = time.perf_counter() - start
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()}}
            if val_set is not None:
                val_stats = evaluate_terms(model, val_set.x, config)
                record.update({f"validation_{k}": v for k, v in val_stats.items()})
            record["seconds"] = seconds
            with open(run_dir / runs.METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            runs.save_weights(model, run_dir / runs.WEIGHTS)

    model.eval()
    final = _final_evaluation(model, splits, config)
    runs.write_json(run_dir / runs.EVALUATION, final)
    if figures:
        from vaekit import plots

        plots.draw_all(run_dir, model, splits, runs.read_metrics(run_dir))
    if not quiet:
        print(f"run written to {run_dir}")
    return run_dir


def run_epoch(
    model, optimizer, x: torch.Tensor, config: Config, order: torch.Generator,
    draws: torch.Generator, on_step=None,
) -> dict[str, float]:
    """One pass over ``x`` in random minibatches; returns the per-example mean terms."""
    dynamic = parse_binarize(config.binarize)[0] == "dynamic"
    permutation = torch.randperm(len(x), generator=order)
    totals = torch.zeros(len(TERMS))
    for start in range(0, len(x), config.batch_size):
        batch = x[permutation[start : start + config.batch_size]]
        if dynamic:
            batch = torch.bernoulli(batch, generator=draws)
        loss, terms = training_loss(model, batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        totals += torch.stack([terms[k].detach().sum() for k in TERMS])
        if on_step is not None:
            on_step(loss.item())
    return dict(zip(TERMS, (totals / len(x)).tolist(), strict=True))


@torch.no_grad()
def evaluate_terms(
    model, x: torch.Tensor, config: Config, batch_size: int = 1000
) -> dict[str, float]:
    """Per-example means of ELBO, reconstruction and KL over ``x`` (no gradients)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(TERMS))
    for start in range(0, len(x), batch_size):
        terms = elbo_terms(model, x[start : start + batch_size], config.samples, config.kl)
        totals += torch.stack([terms[k].sum() for k in TERMS])
    model.train(was_training)
    return dict(zip(TERMS, (totals / len(x)).tolist(), strict=True))


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    # fused=True runs Adam's update as one kernel: the default per-parameter loop was the
    # largest single cost of a CPU training step in profiles (see docs/performance.md).
    return torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )


def check_data(data: Dataset, config: Config, quiet: bool = False) -> None:
    """Refuse data the likelihood cannot model; warn when the number will not be a likelihood."""
    if len(data) == 0:
        raise VaekitError("the training set is empty")
    if config.likelihood != "bernoulli":
        return
    lo, hi, binary = value_range(data.x)  # in chunks when the data are read on demand
    if lo < 0 or hi > 1:
        raise VaekitError(
            f"the bernoulli likelihood needs data in [0, 1], but {data.name} spans "
            f"[{lo:g}, {hi:g}]; use --likelihood gaussian or rescale the data"
        )
    dynamic = parse_binarize(config.binarize)[0] == "dynamic"
    if not binary and not dynamic and not quiet:
        _say(
            "warning: bernoulli likelihood on non-binary data: the ELBO is then not a bound "
            "on a log-likelihood (use --binarize dynamic|static|threshold, or a likelihood "
            "for grey levels)"
        )


def prepare_run_dir(out: str | Path, overwrite: bool) -> Path:
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise VaekitError(f"--out {run_dir} exists and is not a directory")
    if (run_dir / runs.CONFIG).exists() and not overwrite:
        raise VaekitError(
            f"{run_dir} already holds a run; choose another --out or pass --overwrite"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".vaekit-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise VaekitError(f"cannot write to {run_dir}: {err.strerror or err}") from None
    return run_dir


def _final_evaluation(model, splits: dict, config: Config) -> dict:
    from vaekit.evaluate import evaluate

    for name in ("validation", "test", "train"):
        if splits.get(name) is not None:
            result = evaluate(model, splits[name].x, samples=config.samples, kl=config.kl)
            return {"split": name, **result}
    return {}


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(quiet: bool):
    if quiet:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=not sys.stderr.isatty(),
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr)
