"""Experiment trackers as :class:`~vaekit.training.Callback` objects: TensorBoard (torch's
own ``SummaryWriter``) and MLflow (a file store by default: no server). Each logs the
settings once, every epoch's metrics, and at the end the evaluation and the figures.

Their packages are optional extras, imported only when a tracker starts; a missing one is
one clear error naming the extra to install.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError
from vaekit.rundir import FIGURES, TRACKER_LOGS
from vaekit.training import Callback, Loop

NAMES = ("tensorboard", "mlflow")
TENSORBOARD_DIR, MLFLOW_DIR = TRACKER_LOGS  # in the run directory, replaced with it by --overwrite
RUN_TAG = "vaekit.run_dir"  # an MLflow run's tag: the run directory it logs
# The mlflow extra's range (pyproject.toml): MLflow 3 refuses the file store these runs log to
# unless an environment override is set, and its client API changed.
MLFLOW_RANGE = ((2, 10), (3, 0))


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries (booleans and NaN left out: trackers cannot plot them)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _figures(loop: Loop) -> list[Path]:
    if loop.out is None:
        return []
    return [loop.out.figure(name) for name in FIGURES if loop.out.figure(name).is_file()]


class TensorBoard(Callback):
    """Scalars per epoch (``train_elbo``, ``validation_elbo``, ...), the settings as text,
    the final evaluation's numbers and the figures as images, in ``log_dir`` (default: the
    run directory's ``tensorboard/`` folder)."""

    def __init__(self, log_dir: str | Path | None = None, params: dict[str, Any] | None = None):
        self.log_dir, self.params = log_dir, params
        self.writer = None

    def on_fit_start(self, loop: Loop) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VaekitError("the TensorBoard tracker needs the tensorboard package: "
                              "pip install 'vaekit[tensorboard]'") from None
        log_dir = self.log_dir or (loop.out.figure(TENSORBOARD_DIR) if loop.out is not None else "runs/tensorboard")
        self.writer = SummaryWriter(str(log_dir))
        if self.params:
            self.writer.add_text("config", "```\n" + json.dumps(self.params, indent=2) + "\n```", 0)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        for key, value in _numbers(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def on_results(self, loop: Loop, evaluation: dict[str, Any] | None) -> None:
        import numpy as np
        from PIL import Image

        step = len(loop.history.epochs)
        for key, value in _numbers(evaluation or {}).items():
            self.writer.add_scalar(f"evaluation/{key}", value, step)
        for path in _figures(loop):
            with Image.open(path) as image:
                self.writer.add_image(f"figures/{path.stem}", np.asarray(image.convert("RGB")), step,
                                      dataformats="HWC")
        self.writer.close()


class MLflow(Callback):
    """Parameters (the settings), metrics per epoch, the final evaluation and the figures as
    artifacts of one MLflow run. ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else a
    file store in the run directory (``mlruns/``), so no server is needed. A resumed run
    continues the MLflow run it started (found by its ``vaekit.run_dir`` tag); a new run in
    the same folder (``--overwrite``) replaces it: the earlier MLflow runs with that tag are
    deleted (MLflow's soft delete: ``mlflow gc`` purges them, ``restore_run`` brings one back)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "vaekit",
                 run_name: str | None = None, params: dict[str, Any] | None = None):
        self.tracking_uri, self.experiment, self.run_name, self.params = tracking_uri, experiment, run_name, params
        self.client = self.run_id = None

    def on_fit_start(self, loop: Loop) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise VaekitError("the MLflow tracker needs the mlflow package: pip install 'vaekit[mlflow]'") from None
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            where = loop.out.figure(MLFLOW_DIR) if loop.out is not None else Path(MLFLOW_DIR)
            uri = where.resolve().as_uri()
            # MLflow caches a file store per URI and lays out its folder only when it first builds
            # it: an overwritten run's folder is new, so it is laid out here (a second run in one process)
            from mlflow.store.tracking.file_store import FileStore

            FileStore(str(where.resolve()))
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(self.experiment)
        tag = str(loop.out.path.resolve()) if loop.out is not None else None
        if tag is not None:
            earlier = _tagged_runs(self.client, experiment, tag)
            if earlier and loop.steps_done > 0:  # a resumed run: the latest MLflow run goes on
                self.run_id = earlier[0].info.run_id
                return
            for replaced in earlier:  # a new run in this folder (--overwrite) replaces them
                self.client.delete_run(replaced.info.run_id)
        run = self.client.create_run(experiment, run_name=self.run_name or (loop.out.path.name if tag else None),
                                     tags={RUN_TAG: tag} if tag else None)
        self.run_id = run.info.run_id
        # fit's own arguments (what a resume compares), then the caller's (the app's config)
        for key, value in {**getattr(loop, "settings", {}), **(self.params or {})}.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        for key, value in _numbers(record).items():
            if key != "epoch":
                self.client.log_metric(self.run_id, key, value, step=record["epoch"])

    def on_results(self, loop: Loop, evaluation: dict[str, Any] | None) -> None:
        step = len(loop.history.epochs)
        for key, value in _numbers(evaluation or {}).items():
            self.client.log_metric(self.run_id, f"evaluation_{key}", value, step=step)
        for path in _figures(loop):
            self.client.log_artifact(self.run_id, str(path), "figures")
        self.client.set_terminated(self.run_id)


def _tagged_runs(client, experiment: str, tag: str) -> list:
    """The active MLflow runs of ``experiment`` tagged with run directory ``tag``, newest first.

    A path may hold any character, quotes included, and MLflow's filter strings have no
    escapes: the filter is a LIKE whose pattern has every character other than letters,
    digits and a few safe ones as the one-character wildcard, and the runs it finds are
    then compared exactly."""
    pattern = "".join(c if c.isalnum() or c in "/-.:~+@,= " else "_" for c in tag)
    found = client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` LIKE '{pattern}'",
                               order_by=["attributes.start_time DESC"])
    return [r for r in found if r.data.tags.get(RUN_TAG) == tag]


def mlflow_version() -> str | None:
    """The installed MLflow's version (either distribution: mlflow or mlflow-skinny), without
    importing it; None if unknown."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("mlflow-skinny", "mlflow"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _check_mlflow_version() -> None:
    found = mlflow_version()
    parts = re.match(r"(\d+)\.(\d+)", found or "")
    if parts is None:
        return
    (lo_major, lo_minor), (hi_major, hi_minor) = MLFLOW_RANGE
    lo, hi = f"{lo_major}.{lo_minor}", f"{hi_major}" if hi_minor == 0 else f"{hi_major}.{hi_minor}"
    if not MLFLOW_RANGE[0] <= (int(parts[1]), int(parts[2])) < MLFLOW_RANGE[1]:
        raise VaekitError(
            f"--log mlflow supports MLflow {lo} or later, before {hi} (the 'vaekit[mlflow]' extra's range), "
            f"but MLflow {found} is installed: pip install 'mlflow-skinny>={lo},<{hi}' (or 'mlflow>={lo},<{hi}')"
        )


_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_installed(names: tuple[str, ...]) -> None:
    """Refuse, before anything is written, trackers whose package is missing."""
    import importlib.util

    for name in names:
        module, extra = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise VaekitError(f"the {name} tracker needs the {module} package: pip install 'vaekit[{extra}]'")
        if name == "mlflow":
            _check_mlflow_version()


def trackers(names: tuple[str, ...], params: dict[str, Any] | None = None) -> list[Callback]:
    """The trackers named (``tensorboard``, ``mlflow``), each given the run's settings."""
    check_installed(names)
    made: list[Callback] = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoard(params=params))
        elif name == "mlflow":
            made.append(MLflow(params=params))
        else:
            raise VaekitError(f"unknown tracker '{name}'; choose from {', '.join(NAMES)}")
    return made
