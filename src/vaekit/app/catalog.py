"""The runs under a folder, one summary each: what ``vaekit runs`` shows.

Everything comes from what a run directory holds, read through :mod:`vaekit.runs`
(config, metrics, stored evaluations); nothing is loaded into a model.

Status rule (a run keeps no record of its process, so this is read from its files):

* **finished**: run.json says its last session ended (``ended``, :func:`vaekit.start.ended`:
  the budget was spent or the run asked to stop, then the final evaluation and figures were
  made); ``vaekit train --resume`` leaves such a run as it is unless given a larger budget.
  Runs from before run.json recorded it: the metrics reach the planned epochs and ``evaluation.json`` exists
  (training writes it only after its last epoch); for a run with a step or time budget or
  early stopping, which ends before ``epochs``: ``evaluation.json`` is newer than the metrics
  and the checkpoint.
* **running**: otherwise, when the run wrote one of its files (metrics, weights,
  checkpoint, config) recently: within twice the longest epoch so far or twice
  ``checkpoint_minutes`` (a timed checkpoint is written between steps), whichever is
  shorter, plus a minute; 10 minutes stand for the epoch time before the first one ends.
* **stopped**: otherwise, when the newest file is a checkpoint taken part-way through an
  epoch: what Ctrl-C or SIGTERM leaves (the step is finished and checkpointed).
* **killed**: anything else: the process ended without a stopping checkpoint (SIGKILL, a
  crash, a reboot).

Limits of the rule: a signal that arrives between epochs (during validation) leaves an
end-of-epoch checkpoint and reads as killed; a kill shortly after a timed mid-epoch
checkpoint reads as stopped; a run whose process hangs reads as killed once it has been
silent long enough. Stopped and killed runs both continue with ``vaekit train --resume``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vaekit.errors import VaekitError

STATUSES = ("finished", "running", "stopped", "killed")
FIRST_EPOCH_GUESS = 600.0  # seconds assumed for an epoch before one has finished
GRACE = 60.0  # slack on top of the expected silence (final evaluation, a slow disk)


def find_runs(folder: str | Path) -> list[Path]:
    """Every run directory (one holding ``run.json``: the CLI's and ``vaekit.fit``'s) under ``folder``,
    ``folder`` itself included, sorted by path; hidden folders are skipped and a run's own
    sub-folders are not searched."""
    from vaekit import rundir

    folder = Path(folder)
    if not folder.is_dir():
        raise VaekitError(f"folder not found: {folder}")
    found = []
    for root, dirs, files in os.walk(folder):
        if rundir.INFO in files:
            found.append(Path(root))
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def summarise_run(run_dir: str | Path, name: str | None = None, now: float | None = None) -> dict[str, Any]:
    """One row of the table: name, data, model, epochs done and planned, status, best
    validation ELBO, test log-likelihood and training wall time: the training sessions' real
    time where run.json records it (``sessions_seconds``), else the epochs' seconds summed
    (``wall_time_source`` says which; the epochs' sum leaves out start-up, the final
    evaluation and figures).
    A run that cannot be read gets status ``unreadable`` and the reason in ``problem``."""
    from vaekit import rundir
    from vaekit.app.runs import load_config

    run_dir = Path(run_dir)
    row: dict[str, Any] = {
        "name": name or run_dir.name, "path": str(run_dir), "data": None, "model": None,
        "epochs_done": None, "epochs_planned": None, "status": "unreadable",
        "best_validation_elbo": None, "best_epoch": None, "test_log_likelihood": None,
        "test_log_likelihood_se": None, "test_importance_samples": None, "wall_seconds": None,
        "wall_time_source": None, "sessions_seconds": None, "epochs_seconds": None, "problem": None,
    }
    try:
        metrics = metrics_digest(run_dir)
        if (run_dir / rundir.CONFIG).is_file():
            config = load_config(run_dir)
            data, model = config.data, describe_model(config)
        else:  # trained from Python (vaekit.fit): run.json holds the plan
            config, model = _python_plan(rundir.load_info(run_dir), run_dir / rundir.INFO)
            data, model = "(from Python)", f"{model} (from Python)"
        return _summarise(run_dir, dict(row), config, data, model, metrics, now)
    except VaekitError as err:
        problem = str(err)
    except Exception as err:  # noqa: BLE001 - one damaged run must not hide the others
        problem = f"could not be read ({type(err).__name__}: {_clip(str(err))})"
    return {**row, "problem": problem}


def _python_plan(info: dict[str, Any], path: Path) -> tuple[SimpleNamespace, str]:
    """The plan ``vaekit.fit`` recorded in run.json (epochs, steps, time budget, checkpoint
    interval) and the model's class name, each checked."""
    def whole(key: str, default: int | None) -> int | None:
        value = info.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise VaekitError(f"{path}: {key} is {_clip(repr(value))}, not a whole number ≥ 0")
        return value

    def positive(key: str, default: float | None) -> float | None:
        value = info.get(key, default)
        if value is not None and (finite(value) is None or value < 0):
            raise VaekitError(f"{path}: {key} is {_clip(repr(value))}, not a number ≥ 0")
        return value

    model = info.get("model", "model")
    if not isinstance(model, str):
        raise VaekitError(f"{path}: model is {_clip(repr(model))}, not a name")
    plan = SimpleNamespace(epochs=whole("epochs", None), steps=whole("steps", 0) or 0,
                           time_budget=positive("time_budget", None),
                           checkpoint_minutes=positive("checkpoint_minutes", 10.0))
    return plan, _clip(model, 40)


def _summarise(run_dir: Path, row: dict[str, Any], config, data, model, metrics, now) -> dict[str, Any]:
    budget = getattr(config, "steps", 0) or getattr(config, "time_budget", None) is not None
    row.update(data=data, model=model, epochs_planned=None if budget else config.epochs,  # a step or time budget
               epochs_done=metrics[-1]["epoch"] if metrics else 0,
               status=run_status(run_dir, config, metrics, now))
    if metrics.best is not None:
        row["best_validation_elbo"], row["best_epoch"] = metrics.best
    row["epochs_seconds"] = metrics.seconds
    row["sessions_seconds"] = sessions_seconds(run_dir)
    if row["sessions_seconds"] is not None:
        row["wall_seconds"], row["wall_time_source"] = row["sessions_seconds"], "sessions"
    elif row["epochs_seconds"] is not None:
        row["wall_seconds"], row["wall_time_source"] = row["epochs_seconds"], "epochs"
    problems: list[str] = []
    test = test_evaluation(run_dir, problems, config)
    row["problem"] = "; ".join(problems) or None
    if test is not None:
        row["test_log_likelihood"] = test.get("log_likelihood")
        row["test_log_likelihood_se"] = test.get("log_likelihood_se")
        row["test_importance_samples"] = test.get("importance_samples")
    return row


def runs_table(folder: str | Path, now: float | None = None) -> list[dict[str, Any]]:
    """:func:`summarise_run` for every run under ``folder``, named by their path inside it."""
    folder = Path(folder)
    rows = []
    for run_dir in find_runs(folder):
        name = run_dir.relative_to(folder).as_posix()
        rows.append(summarise_run(run_dir, run_dir.resolve().name if name == "." else name, now))
    return rows


def describe_model(config) -> str:
    """A short description such as ``vae mlp 400 d=2 bernoulli``."""
    body = ",".join(map(str, config.channels if config.architecture == "conv" else config.hidden))
    parts = [config.model, config.architecture]
    if config.architecture != "linear" and body:
        parts.append(body)
    latent = f"d={config.latent_dim}"
    if config.model == "hvae":
        latent += f"+{config.latent_dim2 or config.latent_dim // 2}"
    parts += [latent, config.likelihood]
    # what closes the gap tells runs apart: named where it is not N(0, I) and a diagonal Gaussian
    if config.model != "ae":
        if config.prior != "standard":
            parts.append(f"{config.prior} prior K={config.prior_components}")
        if config.posterior != "diagonal":  # every posterior but the full Gaussian is a flow of flow_steps
            steps = "" if config.posterior == "full" else f" {config.flow_steps} steps"
            parts.append(f"{config.posterior} q{steps}")
    if config.objective != "elbo":
        parts.append(f"{config.objective} k={config.k}")
    return " ".join(parts)


class MetricsDigest(list):
    """What the table needs of ``metrics.jsonl``, read in one pass with memory for one line:
    as a list, the last epoch's record with the longest epoch's ``seconds`` (what
    :func:`run_status` reads); ``best`` (validation ELBO, epoch) and ``seconds`` (the
    epochs' sum) as attributes."""

    best: tuple[float, int] | None = None
    seconds: float | None = None


def metrics_digest(run_dir: str | Path) -> MetricsDigest:
    from vaekit import rundir

    digest = MetricsDigest()
    last, longest, total = None, None, 0.0
    for m in rundir.iter_metrics(run_dir):
        last = m["epoch"]
        value = finite(m.get("validation_elbo"))
        if value is not None and (digest.best is None or value > digest.best[0]):
            digest.best = (value, m["epoch"])
        if m.get("seconds") is not None:  # checked by iter_metrics
            total += m["seconds"]
            longest = max(longest or 0.0, m["seconds"])
    if last is not None:
        digest.append({"epoch": last, **({} if longest is None else {"seconds": longest})})
    digest.seconds = None if longest is None else total
    return digest


def best_validation(metrics: list[dict[str, Any]]) -> tuple[float, int] | None:
    """(best validation ELBO, its epoch), or None when no epoch has a finite one."""
    scored = [(v, m["epoch"]) for m in metrics if (v := finite(m.get("validation_elbo"))) is not None]
    return max(scored, key=lambda s: s[0]) if scored else None


def sessions_seconds(run_dir: str | Path) -> float | None:
    """The training sessions' real time, start to end, summed over resumes: run.json's
    ``sessions_seconds`` (a number, or a list of one per session). None where run.json has
    none (runs from before it was recorded) or holds no valid one."""
    from vaekit import rundir

    try:
        info = rundir.read_json(Path(run_dir) / rundir.INFO, "the run's description", rundir.RECORD_BYTES)
    except VaekitError:
        return None
    value = info.get("sessions_seconds") if isinstance(info, dict) else None
    parts = value if isinstance(value, list) else [value]
    parts = [finite(v) for v in parts]
    if not parts or any(v is None or not 0 <= v <= rundir.MAX_EPOCH_SECONDS for v in parts):
        return None
    return math.fsum(parts)


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def number(value: Any) -> float | None:
    """``value`` as a float if it is a number (NaN and ±inf included, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


# What a stored evaluation may hold, as the report and this table read it.
EVALUATION_NUMBERS = ("elbo", "reconstruction", "kl", "mutual_information", "marginal_kl", "log_likelihood",
                      "gap", "elbo_local", "amortisation_gap", "approximation_gap", "iwae_bound", "bits_per_dim")
EVALUATION_COUNTS = ("n", "importance_samples", "iwae_k", "active_units", "epoch", "seed")
EVALUATION_TEXTS = ("split", "weights", "bits_per_dim_note")
MAX_CURVE_POINTS = 200  # K values of one stored curve (evaluate --curve stores about 10)
MAX_TEXT = 300  # characters kept of a stored text (a split's name, a note)


def check_evaluation(result: Any, path: Path) -> dict[str, Any]:
    """A stored evaluation (``evaluation*.json``, already parsed) reduced to what is shown of
    it, every value checked: numbers are numbers, counts whole and not negative, texts short
    strings, the curve a list of ``{k, estimate, se}``. A :class:`VaekitError` naming the file
    and the key otherwise."""
    if not isinstance(result, dict):
        raise VaekitError(f"{path}: not a stored evaluation (a JSON object)")
    clean: dict[str, Any] = {}
    for key in EVALUATION_NUMBERS:
        for name in (key, f"{key}_se"):
            value = result.get(name)
            if value is not None:
                if number(value) is None:
                    raise VaekitError(f"{path}: {name} is {_clip(repr(value))}, not a number")
                clean[name] = number(value)
    for key in EVALUATION_COUNTS:
        value = result.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise VaekitError(f"{path}: {key} is {_clip(repr(value))}, not a whole number ≥ 0")
            clean[key] = value
    for key in EVALUATION_TEXTS:
        value = result.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise VaekitError(f"{path}: {key} is {_clip(repr(value))}, not a text")
            clean[key] = value[:MAX_TEXT]
    per_dim = result.get("active_units_per_dim")
    if isinstance(per_dim, list):
        clean["active_units_of"] = len(per_dim)  # only its length is shown
    if result.get("curve") is not None:
        clean["curve"] = _check_curve(result["curve"], path)
    return clean


def _check_curve(curve: Any, path: Path) -> list[dict[str, float | int | None]]:
    if not isinstance(curve, list) or not curve:
        raise VaekitError(f"{path}: curve is {_clip(repr(curve))}, not a list of points")
    if len(curve) > MAX_CURVE_POINTS:
        raise VaekitError(f"{path}: curve has {len(curve):,} points, more than the {MAX_CURVE_POINTS} shown")
    points = []
    for point in curve:
        k = point.get("k") if isinstance(point, dict) else None
        estimate = number(point.get("estimate")) if isinstance(point, dict) else None
        se = point.get("se") if isinstance(point, dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or estimate is None or (
                se is not None and number(se) is None):
            raise VaekitError(f"{path}: curve point {_clip(repr(point))} is not {{k ≥ 1, estimate, se}}")
        points.append({"k": k, "estimate": estimate, "se": None if se is None else number(se)})
    return points


def read_evaluation(path: Path) -> dict[str, Any]:
    """A stored evaluation file, read (size-capped) and checked by :func:`check_evaluation`."""
    from vaekit import rundir

    return check_evaluation(rundir.read_json(path, "a stored evaluation"), path)


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def true_split(result: dict[str, Any], config: Any) -> str:
    """The split an evaluation was made on: a run that validated on the test set
    (``validation_split = "test"``) stored its final evaluation of the test set as
    "validation". ``config``: the run's config, as a dict or as an object."""
    split = result.get("split", "data")
    chosen = config.get("validation_split") if isinstance(config, dict) else getattr(config, "validation_split", None)
    return "test" if split == "validation" and chosen == "test" else split


def test_evaluation(run_dir: str | Path, problems: list[str] | None = None, config: Any = None,
                    ) -> dict[str, Any] | None:
    """The stored evaluation of the test split: ``evaluation-test.json`` (``vaekit evaluate``),
    else ``evaluation.json`` where training evaluated the test split (also as the validation
    split of a run whose ``config`` says ``validation_split = "test"``); None if neither. A file
    that fails :func:`check_evaluation` is skipped, its reason added to ``problems``."""
    from vaekit import rundir

    run_dir = Path(run_dir)
    for path in (run_dir / "evaluation-test.json", run_dir / rundir.EVALUATION):
        if not path.is_file():
            continue
        try:
            result = read_evaluation(path)
        except VaekitError as err:
            if problems is not None:
                problems.append(f"{path.name} skipped: {err}")
            continue
        if true_split(result, config or {}) == "test":
            return result
    return None


def run_status(run_dir: str | Path, config, metrics: list[dict[str, Any]], now: float | None = None) -> str:
    """finished, running, stopped or killed, by the rule in this module's docstring."""
    from vaekit import rundir
    from vaekit.start import ended

    run_dir = Path(run_dir)
    done = metrics[-1]["epoch"] if metrics else 0
    by_epochs = config.epochs is not None and done >= config.epochs
    recorded = ended(run_dir)  # the rule `train --resume` follows too
    if recorded or (recorded is None and (by_epochs or _ended_by_other_budget(run_dir, config))
                    and (run_dir / rundir.EVALUATION).is_file()):
        return "finished"
    written = {}
    for name in (rundir.METRICS, rundir.WEIGHTS, rundir.CHECKPOINT, rundir.BEST, rundir.CONFIG):
        try:
            written[name] = (run_dir / name).stat().st_mtime
        except OSError:
            continue
    if not written:
        return "killed"
    now = time.time() if now is None else now
    if now - max(written.values()) <= expected_silence(config, metrics):
        return "running"
    checkpoint = written.get(rundir.CHECKPOINT)
    if checkpoint is not None and checkpoint >= max(written.values()) and _mid_epoch(run_dir / rundir.CHECKPOINT):
        return "stopped"
    return "killed"


def _ended_by_other_budget(run_dir: Path, config) -> bool:
    """A run whose budget is steps or time, or that stops early, ends before ``epochs``:
    finished when its final evaluation is newer than its metrics and checkpoint."""
    from vaekit import rundir

    if not (getattr(config, "steps", 0) or getattr(config, "time_budget", None) or getattr(config, "patience", 0)):
        return False
    try:
        evaluated = (run_dir / rundir.EVALUATION).stat().st_mtime
        others = [(run_dir / n).stat().st_mtime for n in (rundir.METRICS, rundir.CHECKPOINT) if (run_dir / n).exists()]
    except OSError:
        return False
    return all(evaluated >= t for t in others)


def expected_silence(config, metrics: list[dict[str, Any]]) -> float:
    """The longest a training process goes without writing a file, in seconds, with slack."""
    seconds = [m["seconds"] for m in metrics if isinstance(m.get("seconds"), int | float)]
    interval = max(seconds) if seconds else FIRST_EPOCH_GUESS
    if config.checkpoint_minutes > 0:
        interval = min(interval, 60.0 * config.checkpoint_minutes)
    return 2.0 * interval + GRACE


def _mid_epoch(path: Path) -> bool:
    """Whether a checkpoint was taken inside an epoch. Only the safetensors header is read:
    a table of many runs should not read (and checksum) every run's optimiser state."""
    from vaekit import rundir

    try:
        meta = rundir.read_header(path, "the checkpoint")[1]
    except (OSError, VaekitError):  # any unreadable header means "no usable checkpoint"
        return False
    return isinstance(meta, dict) and isinstance(meta.get("in_epoch"), dict)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_wall_time(row: dict[str, Any]) -> str:
    """A row's wall time, marked ``(epochs)`` where it is the epochs' sum, not the sessions'."""
    shown = format_duration(row.get("wall_seconds"))
    return f"{shown} (epochs)" if row.get("wall_time_source") == "epochs" else shown


def format_runs(rows: list[dict[str, Any]], width: int | None = None) -> str:
    """The rows as a text table (rich), one line per run, problems listed below it."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title, justify in (("run", "left"), ("data", "left"), ("model", "left"), ("epochs", "right"),
                           ("status", "left"), ("best val. ELBO", "right"), ("test log p(x)", "right"),
                           ("wall time", "right")):
        table.add_column(title, justify=justify, no_wrap=True)
    for r in rows:
        epochs = "—" if r["epochs_done"] is None else str(r["epochs_done"])
        if r["epochs_planned"] is not None:
            epochs += f"/{r['epochs_planned']}"
        best = "—" if r["best_validation_elbo"] is None else f"{r['best_validation_elbo']:.2f} (ep. {r['best_epoch']})"
        test = "—"
        if r["test_log_likelihood"] is not None:
            test = f"{r['test_log_likelihood']:.2f}"
            if r["test_log_likelihood_se"] is not None:
                test += f" ± {r['test_log_likelihood_se']:.2f}"
        table.add_row(r["name"], _short(r["data"]), r["model"] or "—", epochs, r["status"], best, test,
                      format_wall_time(r))
    buffer = io.StringIO()
    # a wide virtual terminal: rows are never folded, whatever the real one (or a pipe) is
    Console(file=buffer, width=width or 240, color_system=None, highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    if any(r.get("wall_time_source") == "epochs" for r in rows):
        lines.append("wall time (epochs): the epochs' seconds summed, without start-up, evaluation and figures "
                     "(runs from before vaekit recorded the sessions' time)")
    lines += [f"{r['name']}: {r['problem']}" for r in rows if r["problem"]]
    return "\n".join(lines).strip("\n")


def _short(data: str | None) -> str:
    if data is None:
        return "—"
    return Path(data).name if ("/" in data or os.sep in data) else data
