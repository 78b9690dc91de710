"""The training loop: minibatch stochastic optimisation of the objective with Adam.

Data live in memory as one tensor and are batched by index (no per-item Python work);
every epoch appends a line to ``metrics.jsonl`` and rewrites ``model.safetensors``.
Checkpoints (:mod:`vaekit.checkpoint`) are written every ``checkpoint_every`` epochs and
every ``checkpoint_minutes`` (between steps), and on SIGINT/SIGTERM; :func:`resume`
continues a run from its checkpoint and ends bit for bit where the uninterrupted run would.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vaekit import checkpoint, likelihoods, runs
from vaekit._callable import make_module_callable
from vaekit.checkpoint import EpochProgress, TrainState
from vaekit.config import Config, parse_binarize
from vaekit.data import Dataset, run_splits, write_run_data
from vaekit.data.lazy import value_range
from vaekit.errors import Interrupted, VaekitError, WriteError
from vaekit.model import build_model, labels_for, with_classes
from vaekit.objectives import elbo_terms, training_loss
from vaekit.threads import ThreadPolicy, tune_allocator

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
    set_threads(config.threads, quiet=True)  # the busy-machine advice comes once training starts
    splits = run_splits(config, quiet=quiet)
    train_set = splits["train"]
    check_data(train_set, config, quiet)
    config = with_classes(config, train_set.labels)
    run_dir = prepare_run_dir(out, overwrite)

    checkpoint.seed_everything(config.seed)
    model = build_model(config, train_set.event_shape)
    optimizer = make_optimizer(model, config)
    state = TrainState.fresh(config.seed, _fingerprint(splits))
    try:
        runs.save(model, config, run_dir)
        write_run_data(run_dir, config, splits)
        runs.write_metrics(run_dir, [])
    except VaekitError:
        for name in runs.RUN_FILES:  # no half-written run left to mistake for a real one
            (run_dir / name).unlink(missing_ok=True)
        raise
    with _resumable(run_dir):
        return _fit(model, optimizer, state, splits, config, run_dir, quiet=quiet, figures=figures)


def resume(
    run_dir: str | Path,
    changes: dict[str, Any] | None = None,
    *,
    quiet: bool = False,
    figures: bool = True,
) -> Path:
    """Continue the run in ``run_dir`` from its checkpoint. ``changes`` may alter budget
    settings only (``epochs``, ``checkpoint_*``, ``max_bad_steps``, ``threads``, ``data_dir``)."""
    run_dir = Path(run_dir)
    ckpt = checkpoint.load(run_dir)
    config = checkpoint.resume_config(ckpt, runs.load_config(run_dir), changes or {})
    if tuple(runs.load_info(run_dir)["event_shape"]) != ckpt.event_shape:
        raise VaekitError(f"{run_dir}: run.json and the checkpoint disagree on the data's shape")
    done = ckpt.meta["epoch"]
    if ckpt.meta["in_epoch"] is not None:
        done, what = done + 1, f"is part-way through epoch {done + 1}"
    else:
        what = f"has already trained {done} epochs"
    if config.epochs < done:
        raise VaekitError(f"{run_dir} {what}; --epochs {config.epochs} would end before that")
    set_threads(config.threads, quiet=True)  # the busy-machine advice comes once training starts
    splits = run_splits(config, quiet=quiet)
    check_data(splits["train"], config, quiet=True)
    if _fingerprint(splits) != ckpt.meta["data_fingerprint"]:
        raise VaekitError(
            f"the data ({config.data}) are not the data {run_dir} was trained on: "
            "resuming on other data would not continue the same run"
        )
    if splits["train"].event_shape != ckpt.event_shape:
        raise VaekitError(f"{ckpt.path}: event shape {list(ckpt.event_shape)} does not match the data")
    model = build_model(config, ckpt.event_shape)
    optimizer = make_optimizer(model, config)
    state = checkpoint.restore(ckpt, model, optimizer)
    runs.remove_temporary_files(run_dir)
    runs.write_json(run_dir / runs.CONFIG, config.to_dict())
    runs.write_metrics(run_dir, state.metrics)
    if not quiet:
        _say(f"resuming {run_dir} after {state.where()} of {config.epochs} epochs")
    with _resumable(run_dir):
        return _fit(model, optimizer, state, splits, config, run_dir, quiet=quiet, figures=figures)


def _fit(model, optimizer, state: TrainState, splits: dict, config: Config, run_dir: Path,
         *, quiet: bool, figures: bool) -> Path:
    """Train from ``state`` to ``config.epochs``, then evaluate and draw the figures."""
    train_set, val_set = splits["train"], splits["validation"]
    threads = ThreadPolicy(config.threads, quiet=quiet, step_flops=step_flops(model, config))
    saver = _Checkpoints(run_dir, model, optimizer, state, config)
    with _progress(quiet) as progress, _StopOnSignal() as stop:
        steps_per_epoch = -(-len(train_set) // config.batch_size)
        done = state.epoch * steps_per_epoch + (state.in_epoch.step if state.in_epoch else 0)
        task = progress.add_task("training", total=config.epochs * steps_per_epoch, completed=done)
        ticker = _Ticker()
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.in_epoch is None:
                state.in_epoch = EpochProgress.begin(state.order, state.bad_in_a_row)
            current = state.in_epoch
            saver.epoch_started()

            def on_step(loss: float, e: int = epoch) -> None:
                ticker.tick(lambda n: progress.update(
                    task, advance=n, description=f"epoch {e}/{config.epochs}  -ELBO {loss:.2f}"))
                if stop.signum is not None or saver.time_due():
                    saver.save()
                stop.check(state, run_dir)
                threads.check()

            model.train()
            try:
                train_stats = run_epoch(
                    model, optimizer, train_set.x, config, state.order, state.draws,
                    on_step=on_step, progress=current, labels=labels_for(model, train_set), epoch=epoch,
                )
            except NonFiniteTraining as err:
                raise VaekitError(f"{err} {saver.kept()}") from None
            ticker.flush(lambda n: progress.update(task, advance=n))
            seconds = saver.epoch_seconds()
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()}}
            if val_set is not None:
                val_stats = evaluate_terms(model, val_set.x, config, labels=labels_for(model, val_set))
                record.update({f"validation_{k}": v for k, v in val_stats.items()})
            sigma = getattr(model.likelihood, "sigma", None)
            if callable(sigma) and getattr(model.likelihood, "mode", "fixed") != "fixed":
                record["sigma_g_min"] = float(sigma().detach().min())  # how close σ_G came to its floor
            record["seconds"] = seconds
            state.epoch, state.in_epoch, state.bad_in_a_row = epoch, None, current.bad_in_a_row
            state.metrics.append(record)
            runs.append_metrics(run_dir, record)
            runs.save_weights(model, run_dir / runs.WEIGHTS)
            _track_best(model, state, record, config, run_dir)
            if saver.epoch_due(epoch) or stop.signum is not None:
                saver.save()
            stop.check(state, run_dir)

    model.eval()
    final = _final_evaluation(model, splits, config)
    runs.write_json(run_dir / runs.EVALUATION, final)
    if figures:
        from vaekit import plots

        plots.draw_all(run_dir, model, splits, runs.read_metrics(run_dir))
    if not quiet:
        print(f"run written to {run_dir}")
    return run_dir


def step_flops(model: torch.nn.Module, config: Config) -> float | None:
    """Rough FLOPs of one training step of an MLP or linear model: forward and backward
    (3 × 2 multiply-adds per weight and example), the decoder's share once per draw; None
    for conv bodies, whose weights are reused across the image."""
    if config.architecture == "conv":
        return None
    draws = config.k if config.objective == "iwae" else config.samples
    weights = sum(m.weight.numel() * (draws if "decoder" in name else 1)
                  for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * config.batch_size * weights


def set_threads(threads: int, quiet: bool = False) -> int:
    """Use ``threads`` torch threads (0: auto, see :mod:`vaekit.threads`); returns the count."""
    return ThreadPolicy(threads, quiet=quiet).threads


def run_epoch(
    model, optimizer, x: torch.Tensor, config: Config, order: torch.Generator,
    draws: torch.Generator, on_step=None, progress: EpochProgress | None = None,
    labels: torch.Tensor | None = None, epoch: int | None = None,
) -> dict[str, float]:
    """One pass over ``x`` in random minibatches; returns the per-example mean terms, the
    number of skipped steps and of clamped encoder log-variances.

    ``progress`` continues an epoch a checkpoint interrupted: the shuffle is replayed from
    the order generator's state saved before it and the batches already done are skipped.
    A step whose loss or gradient is not finite makes no update and is counted; after
    ``config.max_bad_steps`` of them in a row, :class:`NonFiniteTraining` is raised.
    ``labels`` go along with their examples (conditional models); ``epoch`` drives KL warm-up.
    """
    tune_allocator()
    dynamic = parse_binarize(config.binarize)[0] == "dynamic"
    if progress is None:
        progress = EpochProgress.begin(order)
    order.set_state(progress.order_start)
    permutation = torch.randperm(len(x), generator=order)
    if progress.totals is None:
        progress.totals = torch.zeros(len(TERMS))
    # Per-step overhead is what bounds small-batch training on a CPU (docs/performance.md):
    # the parameter list is gathered once, gradients are dropped by hand (zero_grad wraps a
    # profiler region), and one synchronising check per step covers loss and gradients.
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(progress.step * config.batch_size, len(x), config.batch_size):
        index = permutation[start : start + config.batch_size]
        batch = x[index]
        if dynamic:
            batch = torch.bernoulli(batch, generator=draws)
        y = None if labels is None else labels[index]
        loss, terms = training_loss(model, batch, config, y, epoch, start / len(x))
        for p in params:
            p.grad = None
        loss.backward()
        norm = _gradient_check(params, config.grad_clip)
        progress.step += 1
        progress.clamped += int(getattr(model, "clamped", 0))
        if bool(torch.isfinite(loss + norm)):
            optimizer.step()
            progress.totals += torch.stack([terms[k].detach() for k in TERMS]).sum(1)
            progress.examples += len(batch)
            progress.bad_in_a_row = 0
        else:
            progress.skipped += 1
            progress.bad_in_a_row += 1
            if progress.bad_in_a_row >= config.max_bad_steps:
                raise NonFiniteTraining(_bad_steps_message(progress.bad_in_a_row, config))
        if on_step is not None:
            on_step(loss.item())
    # an epoch whose every step was skipped has no mean: NaN, not a flattering 0
    used = progress.examples if progress.examples else float("nan")
    means = (progress.totals / used).tolist()
    return {
        **dict(zip(TERMS, means, strict=True)),
        "skipped_steps": progress.skipped,
        "logvar_clamped": progress.clamped,
    }


class NonFiniteTraining(VaekitError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def _gradient_check(params: list[torch.Tensor], grad_clip: float) -> torch.Tensor:
    """A number that is finite exactly when every gradient is: the clipped norm when clipping,
    else the sum of the per-tensor sums (a sum, not a norm: one pass without squares, 55
    against 99 µs for Burda's 424k gradients on one thread). A sum can overflow only for
    gradients near 1e38, and those are no more usable than infinite ones."""
    if grad_clip:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return torch.stack(sums).sum() if sums else torch.zeros(())


def _bad_steps_message(count: int, config: Config) -> str:
    return (
        f"training stopped: {count} steps in a row had a non-finite loss or gradient (each was "
        f"skipped, so the weights are not poisoned). Usual causes: a learning rate too high "
        f"(lr = {config.lr:g}); with a Gaussian likelihood, a σ_G floor too small "
        f"(sigma_min = {config.sigma_min:g}) or data on a huge scale; with the Bernoulli "
        "likelihood, data outside [0, 1]."
    )


@torch.no_grad()
def evaluate_terms(
    model, x: torch.Tensor, config: Config, batch_size: int = 1000, labels: torch.Tensor | None = None
) -> dict[str, float]:
    """Per-example means of ELBO, reconstruction and KL over ``x`` (no gradients)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(TERMS))
    for start in range(0, len(x), batch_size):
        y = None if labels is None else labels[start : start + batch_size]
        terms = elbo_terms(model, x[start : start + batch_size], config.samples, config.kl, y)
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
    likelihoods.check_data(config.likelihood, data.x, data.name, config.levels)
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
    """Create ``out`` (or reuse it); refuse one holding a run unless ``overwrite``, in which
    case that run's files (and only those) are removed."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise VaekitError(f"--out {run_dir} exists and is not a directory")
    present = [name for name in runs.RUN_FILES if (run_dir / name).exists()]
    if present and not overwrite:
        raise VaekitError(
            f"{run_dir} already holds a run ({', '.join(present[:3])}); choose another --out, "
            f"continue it with --resume {run_dir}, or pass --overwrite to replace it"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaekitError(f"cannot create {run_dir}: {err.strerror or err}") from None
    runs.check_writable(run_dir)
    if present:
        runs.remove_temporary_files(run_dir)
        from vaekit.plots import FIGURES

        for name in (*runs.RUN_FILES, *FIGURES):
            try:
                (run_dir / name).unlink(missing_ok=True)
            except OSError as err:
                raise VaekitError(f"cannot remove the old {run_dir / name}: {err.strerror or err}") from None
    return run_dir


def _fingerprint(splits: dict) -> str:
    val = splits.get("validation")
    return checkpoint.fingerprint(splits["train"].x, None if val is None else val.x)


def _track_best(model, state: TrainState, record: dict, config: Config, run_dir: Path) -> None:
    """Remember the best validation ELBO; with ``save_best`` keep its weights in best.safetensors.

    Written before the epoch's checkpoint: a kill in between re-does the epoch after resume
    and writes the same file again, whereas the other order could lose the best weights."""
    value = record.get("validation_elbo")
    if value is None or value != value:
        return
    if state.best is None or value > state.best["value"]:
        state.best = {"metric": "validation_elbo", "value": value, "epoch": record["epoch"]}
        if config.save_best:
            runs.save_weights(model, run_dir / runs.BEST, epoch=record["epoch"], validation_elbo=value)


@contextmanager
def _resumable(run_dir: Path):
    """A write that fails mid-run (full disk, ...) also says how to carry on once fixed."""
    try:
        yield
    except WriteError as err:
        if not (run_dir / runs.CHECKPOINT).is_file():
            raise
        hint = f"Once that is fixed, continue with: vaekit train --resume {run_dir}"
        raise WriteError(f"{err}. {hint}") from None


class _Checkpoints:
    """When to write checkpoints, and writing them."""

    def __init__(self, run_dir: Path, model, optimizer, state: TrainState, config: Config):
        self.run_dir, self.model, self.optimizer = run_dir, model, optimizer
        self.state, self.config = state, config
        self.last = time.monotonic()
        self.started = time.perf_counter()

    def epoch_started(self) -> None:
        self.started = time.perf_counter()

    def epoch_seconds(self) -> float:
        current = self.state.in_epoch
        before = current.seconds if current is not None else 0.0
        return before + time.perf_counter() - self.started

    def time_due(self) -> bool:
        minutes = self.config.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.last >= 60 * minutes

    def epoch_due(self, epoch: int) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and (epoch % every == 0 or epoch == self.config.epochs)

    def save(self) -> None:
        current = self.state.in_epoch
        if current is not None:
            current.seconds, self.started = self.epoch_seconds(), time.perf_counter()
        checkpoint.save(self.run_dir, self.model, self.optimizer, self.state, self.config)
        self.last = time.monotonic()

    def kept(self) -> str:
        path = self.run_dir / runs.CHECKPOINT
        if not path.is_file():
            return "No checkpoint had been written yet."
        return f"The last good checkpoint is kept in {path}."


class _StopOnSignal:
    """SIGINT and SIGTERM ask the loop to finish its step, checkpoint and stop; a second
    signal stops at once (the last complete checkpoint is still there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _StopOnSignal:
        self.signum: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def check(self, state: TrainState, run_dir: Path) -> None:
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        raise Interrupted(
            f"stopped by {name} after {state.where()}; checkpoint written. "
            f"Resume with: vaekit train --resume {run_dir}",
            self.signum,
        )


def _final_evaluation(model, splits: dict, config: Config) -> dict:
    from vaekit.evaluate import TRAINING_K, evaluate

    for name in ("validation", "test", "train"):
        if splits.get(name) is not None:
            # A modest K keeps training quick; `vaekit evaluate` gives the full protocol.
            result = evaluate(model, splits[name].x, importance_samples=TRAINING_K,
                              labels=labels_for(model, splits[name]))
            return {"split": name, **result}
    return {}


class _Ticker:
    """Calls its callback at most every ``seconds`` with the steps since the last call:
    redrawing the progress bar on every small-batch step cost more than the step's maths."""

    def __init__(self, seconds: float = 0.1):
        self.seconds, self.pending, self.last = seconds, 0, time.monotonic()

    def tick(self, update) -> None:
        self.pending += 1
        now = time.monotonic()
        if now - self.last >= self.seconds:
            update(self.pending)
            self.pending, self.last = 0, now

    def flush(self, update) -> None:
        if self.pending:
            update(self.pending)
            self.pending = 0


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


make_module_callable(__name__, train)  # vaekit.train(config, out) calls train()
