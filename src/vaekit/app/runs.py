"""Runs described by a :class:`~vaekit.app.config.Config`: ``train(config, out)``,
``resume(run_dir)`` and ``load(run_dir)``, the app's side of a run directory.

The config is read once here and turned into the library's typed arguments: a model
(:func:`build_model`), data tensors (:mod:`vaekit.app.data`), an objective, and the
arguments of :func:`vaekit.fit`, which does the training and writes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

from vaekit import checkpoint, distributed
from vaekit.app.config import MAY_CHANGE_ON_RESUME, SHORT_RUN_STEPS, Config
from vaekit.app.console import ProgressLines, Summary
from vaekit.app.console import say as _say
from vaekit.app.factories import (  # noqa: F401 (build_model, initialise, ... are also read from here)
    build_checked,
    build_model,
    check_model_size,
    data_mean,
    initialise,
    objective_for,
    optimizer_for,
    schedule_from_spec,
    step_flops,
)
from vaekit.app.threads import ThreadPolicy
from vaekit.callbacks import ProgressBar
from vaekit.devices import CompiledObjective, auto_compile, auto_precision, forked_rng, resolve_device
from vaekit.errors import NoCheckpoint, NotARunFolder, RunExists, VaekitError
from vaekit.model import VAE, num_classes
from vaekit.rundir import RunDirectory
from vaekit.start import finished
from vaekit.trackers import check_installed, trackers
from vaekit.training import Budget, Callback, Checkpointing, EarlyStopping, FigureLabels, Guards, fit


def train(
    config: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    figures: bool = True,
    callbacks: list[Callback] = (),
) -> Path:
    """Train the model ``config`` describes; write the run directory ``out`` and return it.
    ``callbacks`` join fit's own (:class:`vaekit.Callback`)."""
    from vaekit.app.data import absolute_spec, run_splits, write_run_data
    from vaekit.app.data.choice import decide_likelihood

    config.validate()
    # decided once and recorded: the run's data stay the same file whatever the current folder later
    config = dataclasses.replace(config.resolved(), data=absolute_spec(config.data))
    group = distributed.current()  # under torchrun rank 0 alone touches the run directory
    # before the data are read: a quick refusal
    with cli_words(Path(out)):
        distributed.together(lambda: RunDirectory(out).check_target(overwrite), group, main_only=True)
    device = resolve_device(config.device)
    check_installed(config.trackers)
    with ThreadPolicy(config.threads, quiet=True) as policy:  # busy-machine advice once training starts
        splits = run_splits(config, quiet=quiet)
        train_set = splits["train"]
        config, notes = decide_likelihood(config, train_set)  # likelihood "auto" from the data
        for note in notes if not quiet and (group is None or group.main) else ():
            _say(note)
        check_data(train_set, config, quiet)
        config = with_classes(config, train_set.labels, train_set.classes)
        check_model_size(config, train_set.event_shape)
        with forked_rng(torch.device("cpu"), config.seed):  # the initial weights follow the seed
            model = build_model(config, train_set.event_shape)
            initialise(model, config, train_set.x)
        short = short_run(config, len(train_set.x))
        if short and not quiet and (group is None or group.main):
            _say(f"warning: {short} is a very short run: its numbers are far from what the model reaches "
                 f"(a few hundred steps at the least, usually many thousands); give more --epochs or --steps N")
        # Everything that can be checked has been: only now is the folder touched. An old run
        # (--overwrite) stays as it was until the new one starts training (fit commits it). This
        # object owns the run: a failure before training started discards it; the lock goes at the end.
        run = RunDirectory(out)

        def prepare() -> None:
            run.prepare(overwrite)
            run.write_config(config.to_dict())
            write_run_data(run, config, splits)

        with cli_words(run.path), run:
            distributed.together(prepare, group, main_only=True)
            _fit(model, config, splits, run, device, policy, quiet=quiet, figures=figures, resume=False,
                 callbacks=list(callbacks))
    return run.path


@contextlib.contextmanager
def cli_words(run: Path):
    """The library's errors about the run in ``run``, with what to type to go on."""
    try:
        yield
    except RunExists as err:
        raise VaekitError(f"{err.path} already holds a run ({', '.join(err.files[:3])}); choose another --out, "
                          f"continue it with --resume {err.path}, or pass --overwrite to replace it") from None
    except NotARunFolder as err:
        message = str(err).replace(str(err.path), f"--out {err.path}", 1)
        raise VaekitError(message.replace("overwriting replaces", "--overwrite replaces")
                          + ("" if "not a directory" in message else ": choose another --out")) from None
    except NoCheckpoint as err:
        raise VaekitError(f"{err}: start it again with --overwrite") from None
    except VaekitError as err:
        if err.resumable is not None:
            err.how_to_resume = f"vaekit train --resume {err.resumable}"
        raise


def short_run(config: Config, examples: int) -> str | None:
    """How the run's budget reads when it plans fewer than SHORT_RUN_STEPS optimisation
    steps ('30 steps', '20 epochs of 2 steps (200 examples, batch 128) = 40 steps'), else
    None. A time budget plans its steps while training: never short here."""
    if config.steps:
        return f"{config.steps} steps" if config.steps < SHORT_RUN_STEPS else None
    if config.time_budget is not None:
        return None
    per_epoch = math.ceil(examples / config.batch_size)
    planned = config.epochs * per_epoch
    if planned >= SHORT_RUN_STEPS:
        return None
    return (f"{config.epochs} epochs of {per_epoch} steps ({examples} examples, batch {config.batch_size}) "
            f"= {planned} steps")


def budget_text(config: Config) -> str:
    """'30 epochs', '5000 steps' or '60m of training time'."""
    if config.steps:
        return f"{config.steps} steps"
    if config.time_budget is not None:
        return f"{config.time_budget} of training time"
    return f"{config.epochs} epochs"


def resume(
    run_dir: str | Path,
    changes: dict[str, Any] | None = None,
    *,
    quiet: bool = False,
    figures: bool = True,
    callbacks: list[Callback] = (),
) -> Path:
    """Continue the run in ``run_dir`` from its checkpoint. ``changes`` may alter budget
    settings only (``epochs``, ``checkpoint_*``, ``max_bad_steps``, ``threads``, ``data_dir``,
    ``device``, ``mirror``)."""
    group = distributed.current()  # under torchrun rank 0 alone touches the run directory
    run = RunDirectory(run_dir)
    with cli_words(run.path), run:  # one writer at a time; released when this returns
        distributed.together(run.lock, group, main_only=True)
        _resume(run, changes or {}, quiet, figures, group, list(callbacks))
    return run.path


def _resume(run: RunDirectory, changes: dict[str, Any], quiet: bool, figures: bool, group,
            callbacks: list[Callback]) -> None:
    from vaekit.app.data import run_splits

    def read() -> dict[str, Any]:  # rank 0 reads the run directory; the others get what it says
        ckpt = checkpoint.load(run.path)
        config = resume_config(ckpt, load_config(run.path), changes)
        if tuple(run.read_info()["event_shape"]) != ckpt.event_shape:
            raise VaekitError(f"{run.path}: run.json and the checkpoint disagree on the data's shape")
        shapes = {k[len("model."):]: list(v.shape) for k, v in ckpt.tensors.items() if k.startswith("model.")}
        meta = ckpt.meta
        done = finished(run.path, meta["epoch"], meta["in_epoch"], meta.get("steps"), checkpoint._seconds(meta),
                        meta.get("plan"), run_budget(config))
        return {"finished": done, "steps_done": meta.get("steps"), "config": config.to_dict(),
                "event_shape": list(ckpt.event_shape), "epoch": ckpt.meta["epoch"],
                "in_epoch": ckpt.meta["in_epoch"], "checkpoint": str(ckpt.path), "shapes": shapes}

    stored = distributed.broadcast_json(distributed.together(read, group, main_only=True), group)
    config = Config.from_dict(stored["config"], f"{run.path}'s config")
    event_shape = tuple(stored["event_shape"])
    done = stored["epoch"]
    if stored["in_epoch"] is not None:
        done, what = done + 1, f"is part-way through epoch {done + 1}"
    else:
        what = f"has already trained {done} epochs"
    if config.epochs < done and not (config.steps or config.time_budget):
        raise VaekitError(f"{run.path} {what}; --epochs {config.epochs} would end before that")
    if stored["finished"]:  # nothing to train: the run is left as it is
        if not quiet and (group is None or group.main):
            _say(finished_message(run.path, config, stored["epoch"], stored["steps_done"]))
        return
    device = resolve_device(config.device)

    check_installed(config.trackers)
    with ThreadPolicy(config.threads, quiet=True) as policy:
        # a run's own mirror list is someone else's choice of server: only the user's flag counts
        splits = run_splits(dataclasses.replace(config, mirror=changes.get("mirror")), quiet=quiet)
        check_data(splits["train"], config, quiet=True)
        if splits["train"].event_shape != event_shape:
            raise VaekitError(f"{stored['checkpoint']}: event shape {list(event_shape)} does not match the data")
        model = build_checked(config, event_shape, {k: tuple(v) for k, v in stored["shapes"].items()},
                              Path(stored["checkpoint"]))
        step = stored["in_epoch"]
        where = f"epoch {done}" if step is None else f"epoch {done}, step {step['step']}"
        message = f"resuming {run.path} after {where} of {budget_text(config)}"
        started = _Started(run, config, None if quiet else message)
        _fit(model, config, splits, run, device, policy, quiet=quiet, figures=figures, resume=True,
             callbacks=[started, *callbacks])


def run_budget(config: Config) -> Budget:
    """The config's budget as fit takes it."""
    if config.steps:
        return Budget(steps=config.steps)
    if config.time_budget is not None:
        return Budget(time=config.time_budget_seconds)
    return Budget(epochs=config.epochs)


def finished_message(path: Path, config: Config, epochs: int, steps: int | None) -> str:
    """What ``train --resume`` says of a finished run, and how to train it on."""
    if config.steps:
        trained, more = f"{steps} of {config.steps} steps", f"--steps {2 * config.steps}"
    elif config.time_budget is not None:
        trained, more = f"its {config.time_budget} of training time", "--time-budget LONGER"
    else:
        trained, more = f"{epochs} of {config.epochs} epochs", f"--epochs {2 * max(config.epochs, 1)}"
    return (f"{path} is finished: it trained {trained}. To train on, give a larger budget: "
            f"vaekit train --resume {path} {more}")


class _Started(Callback):
    """Once fit has accepted the checkpoint and starts training: the run's config.json
    becomes the resumed one (fit's checkpoints already carry it), and ``message`` is said.
    A refused resume leaves the run as it was."""

    def __init__(self, run: RunDirectory, config: Config, message: str | None):
        self.run, self.config, self.message = run, config, message

    def on_fit_start(self, loop) -> None:
        if loop.out is not None:  # rank 0
            self.run.write_config(self.config.to_dict())
        if self.message:
            _say(self.message)


def _fit(model, config: Config, splits: dict, run: RunDirectory, device, policy: ThreadPolicy, *,
         quiet: bool, figures: bool, resume: bool, callbacks: list[Callback] = ()) -> None:
    """:func:`vaekit.fit` with the config's settings as typed arguments."""
    from vaekit.app.data.standardize import data_units_callback
    from vaekit.app.threads import ThreadCheck

    group = distributed.current()
    main = group is None or group.main
    mine = trackers(config.trackers, config.to_dict()) if main else []  # rank 0 logs
    # first: the quick evaluation in the data's own units before anything logs or prints it
    units = data_units_callback(splits["train"], quiet) if main else []
    callbacks = [*units, ThreadCheck(policy), *callbacks, *mine]
    terminal = sys.stderr.isatty()
    if not quiet:
        summary = Summary(bound=not grey_bernoulli(splits["train"], config))
        callbacks += [summary] if terminal else [ProgressLines(), summary]
    if not quiet and terminal and main:
        callbacks.insert(0, ProgressBar())
    train_set, val_set = splits["train"], splits["validation"]
    policy.tune(step_flops(model, config), quiet=quiet)
    budget = run_budget(config)
    stopping = [EarlyStopping(config.patience)] if config.patience else []
    precision = resolve_precision(config.precision, device, quiet)
    objective = objective_for(config)
    if resolve_compile(config.compile, device, precision, quiet):
        objective = CompiledObjective(objective)
    fit(
        model,
        # labels reach a conditional model, and colour figure (a) by class for any model
        (train_set.x, train_set.labels),
        validation=None if val_set is None else (val_set.x, val_set.labels),
        budget=budget, batch_size=config.batch_size, objective=objective,
        optimizer=optimizer_for(config, device), lr=config.lr, schedule=schedule_from_spec(config.schedule),
        device=device, precision=precision, seed=config.seed,
        dynamic_binarization=config.binarization.dynamic,
        guards=Guards(config.grad_clip, config.max_bad_steps), out=run, resume=resume,
        checkpointing=Checkpointing(config.checkpoint_every, config.checkpoint_minutes, config.save_best,
                                    metadata=config.to_dict()),
        figures=figures and FigureLabels(
            train_set.classes, train_set.features,
            None if train_set.standardization is None else train_set.standardization.invert),
        callbacks=[*stopping, *callbacks],
    )
    if not quiet:
        print(f"run written to {run.path}")


def resolve_precision(precision: str, device: str | torch.device, quiet: bool = True) -> str:
    """The precision fit trains at: ``auto`` decided for this machine (said in one line; run.json's
    ``precision`` records the outcome, config.json keeps ``auto``), fp32 and bf16 as given."""
    if precision != "auto":
        return precision
    chosen, why = auto_precision(resolve_device(device))
    if not quiet:
        _say(f"precision auto: {chosen} ({why})")
    return chosen


def resolve_compile(setting: str, device: str | torch.device, precision: str, quiet: bool = True) -> bool:
    """Whether the objective runs through torch.compile: ``auto`` decided for this machine and
    precision (said in one line), on and off as given."""
    if setting != "auto":
        return setting == "on"
    chosen, why = auto_compile(resolve_device(device), precision)
    if not quiet:
        _say(f"compile auto: {'on' if chosen else 'off'} ({why})")
    return chosen


def resume_config(ckpt, stored: Config, changes: dict[str, Any]) -> Config:
    """The config a resumed run uses: ``stored`` (the run's config.json) with ``changes``
    applied; refused, listing the differences, if anything but a budget setting differs
    from what the checkpoint was trained with."""
    config = stored.override(changes, source="--resume")
    if ckpt.config is None:
        raise VaekitError(f"{ckpt.path}: this run was trained from Python (vaekit.fit): resume it with "
                          "fit(..., out=..., resume=True)")
    trained = Config.from_stored(ckpt.config, f"{ckpt.path} (its config)")
    refused = [line for line in trained.diff(config) if line.split(":", 1)[0] not in MAY_CHANGE_ON_RESUME]
    if refused:
        raise VaekitError(
            f"cannot resume {ckpt.path.parent}: settings differ from the ones its checkpoint was "
            f"trained with ({'; '.join(refused)}); only {', '.join(MAY_CHANGE_ON_RESUME)} may "
            "change on resume. Start a new run (another --out) instead"
        )
    return config


# ---------------------------------------------------------------------- models from configs
def with_classes(config: Config, labels: torch.Tensor | None, names: list[str] | None = None) -> Config:
    """``config`` with ``classes`` set from the training labels (and class ``names``, all of
    which count even if the training split misses one) for a conditional model (unchanged
    otherwise); a clear error when a CVAE has no labels to condition on."""
    if config.model != "cvae":
        return config
    if labels is None:
        raise VaekitError(
            f"model 'cvae' conditions on class labels, but the data '{config.data}' has none "
            "(give a .npz file with a 'labels' array)"
        )
    if int(labels.min()) < 0:
        raise VaekitError(f"class labels must be non-negative for model 'cvae'; found {int(labels.min())}")
    needed = max(int(labels.max()) + 1, len(names or ()))
    if config.classes and config.classes < needed:
        raise VaekitError(f"classes is {config.classes}, but the labels run up to {needed - 1}")
    if needed > MAX_CLASSES and not config.classes:
        raise VaekitError(
            f"the labels run up to {needed - 1}: a conditional model needs one input per class, "
            f"so more than {MAX_CLASSES} classes are refused (labels should be 0..K-1)"
        )
    return dataclasses.replace(config, classes=config.classes or needed)


MAX_CLASSES = 100_000


def labels_for(model, dataset) -> torch.Tensor | None:
    """The labels to pass along with ``dataset`` to ``model``: its labels when the model is
    conditional, ``None`` otherwise (unconditional models ignore labels)."""
    classes = num_classes(model)
    if not classes:
        return None
    if dataset.labels is None:
        raise VaekitError(f"this conditional model needs class labels, but {dataset.name} has none")
    lo, hi = (int(dataset.labels.min()), int(dataset.labels.max())) if len(dataset.labels) else (0, 0)
    if lo < 0 or hi >= classes:
        bad = hi if hi >= classes else lo
        raise VaekitError(f"{dataset.name}: label {bad} is not one of this conditional model's classes "
                          f"0..{classes - 1}")
    return dataset.labels


def check_data(data, config: Config, quiet: bool = False) -> None:
    """Refuse data the likelihood cannot model, and training steps on them that cannot fit in
    memory; warn when the number will not be a likelihood."""
    from vaekit.app.data.lazy import is_lazy, value_range
    from vaekit.app.factories import check_step_size

    if len(data) == 0:
        raise VaekitError("the training set is empty")
    check_step_size(config, tuple(data.event_shape), len(data))
    name = config.likelihood
    if name in ("continuous-bernoulli", "logistic", "bernoulli"):
        lo, hi, binary = value_range(data.x)  # in chunks when the data are read on demand
        if lo < 0 or hi > 1:
            advice = "use --likelihood gaussian or rescale the data" if name == "bernoulli" else "rescale the data"
            raise VaekitError(f"the {name} likelihood needs data in [0, 1], but {data.name} spans "
                              f"[{lo:g}, {hi:g}]; {advice}")
    if name == "logistic":
        levels = config.levels
        for chunk in data.x.chunks() if is_lazy(data.x) else [data.x]:
            scaled = chunk.double() * (levels - 1)
            if float((scaled - scaled.round()).abs().max()) > 1e-3:
                raise VaekitError(
                    f"the logistic likelihood models {levels} grey levels k/{levels - 1}, but "
                    f"{data.name} has values off that grid; set --levels to the data's number of "
                    f"levels (17 for digits, 256 for 8-bit images)"
                )
    if name == "bernoulli" and not binary and not config.binarization.dynamic and not quiet:
        _say(
            "warning: bernoulli likelihood on non-binary data: the ELBO is then not a bound "
            "on a log-likelihood (use --binarize dynamic|static|threshold, or a likelihood "
            "for grey levels)"
        )


def grey_bernoulli(data, config: Config) -> bool:
    """Whether the run fits a Bernoulli likelihood to grey levels as they are (no binarisation
    per step): its ELBO bounds no log-likelihood, nor does the importance-sampled estimate
    estimate one."""
    from vaekit.app.data.lazy import value_range

    if config.likelihood != "bernoulli" or config.binarization.dynamic or len(data) == 0:
        return False
    return not value_range(data.x)[2]


# ---------------------------------------------------------------------- loading runs
def load_config(run_dir: str | Path) -> Config:
    run = RunDirectory(run_dir)
    if not run.has_config():
        run.check_exists()
        if (run.path / "run.json").is_file():
            raise VaekitError(
                f"{run.path} was trained with a model defined in Python (vaekit.fit): load it with "
                "vaekit.load(run_dir, model=YourModel(...))"
            )
    return Config.from_stored(run.read_config(), str(run.file("config.json")))


def load_run(run_dir: str | Path, weights: str = "last", device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, config) from a run directory started from a config;
    ``weights``: ``last`` (model.safetensors) or ``best`` (the best validation epoch's)."""
    model, config, _ = load_run_epoch(run_dir, weights, device)
    return model, config


def load_run_epoch(run_dir: str | Path, weights: str = "last", device: str | torch.device = "cpu"):
    """As :func:`load_run`, plus the epoch the weights are from (``None`` where unknown).
    The stored weights' shapes are checked against the config before the model is built,
    so a config edited to ask for a huge model allocates nothing. The config's ``mirror`` is
    dropped: a run's own choice of download server is never used (the caller's flag is)."""
    config = load_config(run_dir)
    run = RunDirectory(run_dir)
    shape = tuple(run.read_info()["event_shape"])
    model = build_checked(config, shape, run.weights_shapes(weights), run.weights_path(weights))
    meta = run.load_weights(model, weights)
    if weights == "best":
        epoch = meta.get("epoch")
    else:  # written at the end of every epoch
        metrics = run.read_metrics()
        epoch = metrics[-1]["epoch"] if metrics else None
    return model.to(resolve_device(device)).eval(), dataclasses.replace(config, mirror=None), epoch


def load(run_dir: str | Path, model: torch.nn.Module | None = None, *, weights: str = "last",
         device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model stored in ``run_dir``, in eval mode on ``device``: the weights
    (``last`` or ``best``) loaded into ``model`` (your own module, built as for training), or,
    without one, the model rebuilt from the run's config (runs trained by the CLI or
    ``vaekit.train``). The weights are checked (names, shapes, dtypes, finiteness)."""
    if model is None:
        return load_run(run_dir, weights, device)[0]
    run = RunDirectory(run_dir)
    run.check_exists()
    info = run.read_info()
    if getattr(model, "event_shape", None) is None and hasattr(model, "event_shape"):
        model.event_shape = tuple(info["event_shape"])
    run.load_weights(model, weights)
    return model.to(resolve_device(device)).eval()


def save(model: VAE, config: Config, run_dir: str | Path) -> Path:
    """Write ``config.json``, ``run.json`` and ``model.safetensors`` into ``run_dir``."""
    run = RunDirectory(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(config.to_dict())
    run.write_info(model.event_shape, model=type(model).__name__)
    run.save_weights(model)
    return run.path
