"""Reproduce a preset's published number: train it (resumable), evaluate the final model on
the full test set with K = 5000 importance samples, write a JSON record and the figure of
the test NLL against training time, next to the published number.

    python benchmarks/reproduce.py burda2016-vae-1l-cpu60           # an hour of training, then ~4 min of evaluation
    python benchmarks/reproduce.py burda2016-vae-1l-cpu60 --quick   # the whole pipeline in a few minutes (300 steps,
                                                                    # K = 100 on 1000 test images): numbers not citable
    python benchmarks/reproduce.py --estimate pytorch-examples burda2016-vae-1l   # steps/s here, projected durations
    python benchmarks/reproduce.py burda2016-vae-1l --hours 2   # two hours of a 5-7 h protocol, then evaluate
                                                               # where it reached; run it again to go on
    python benchmarks/reproduce.py tomczak2018-vampprior-vae-1l-cpu60 --set prior=standard
                                     # the preset with one setting changed: a row at the same budget and networks

``--hours H`` ends this session's training after the epoch in which H hours have passed and
evaluates the model where it reached (the record says which pass: ``reached``,
``budget_reached``); the same command continues it later.

Run the same command again after an interruption (Ctrl-C, a kill, a reboot): training resumes
from its checkpoint (bit for bit for step and epoch budgets) and evaluations already done are
kept. Everything goes to benchmarks/results/reproduce/PRESET/ (``run/``: the run directory,
``snapshots/``: weights at training-time marks, ``record.json``, ``nll_vs_time.png``). A full
run that spent its budget also writes its record to src/vaekit/app/presets/records/PRESET.json,
where ``vaekit presets`` reads the measured number from (commit it; --no-publish skips it).

The record holds the machine (CPU, cores, the float32 GEMM peak measured here), the share of
the CPU other processes took while training ran (the development machine is shared: a busy
neighbour slows training and shrinks what a time budget can do), the commit, seed, versions,
training and wall time, the curve and the final evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import vaekit  # noqa: E402
from vaekit.app import presets  # noqa: E402
from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import select_split  # noqa: E402
from vaekit.app.partial import begin  # noqa: E402
from vaekit.app.runs import build_model, load_config, load_run, resume, train  # noqa: E402
from vaekit.devices import cpu_bf16_features  # noqa: E402
from vaekit.errors import Interrupted, VaekitError  # noqa: E402
from vaekit.evaluation import examples_per_batch  # noqa: E402
from vaekit.rundir import RunDirectory, atomic_write, read_metrics, save_weights  # noqa: E402

RESULTS = common.ROOT / "benchmarks" / "results" / "reproduce"
EVAL_SAMPLE = 200  # test images the evaluation time is projected from (×50 for the 10k)
# Training-time marks (minutes) at which weights are kept for the curve; hourly after the last.
MARKS_MINUTES = (5 / 60, 10 / 60, 20 / 60, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60)


def marks_seconds(up_to_hours: float = 1000.0) -> list[float]:
    marks = [60.0 * m for m in MARKS_MINUTES]
    hour = 2
    while hour <= up_to_hours:
        marks.append(3600.0 * hour)
        hour += 1
    return marks


class Snapshots(vaekit.Callback):
    """Keeps the weights when training time (or, for quick runs, the step count) passes
    each mark: snapshots/t<seconds>-s<steps>.safetensors. After a resume the marks already
    passed are not taken again."""

    def __init__(self, folder: Path, seconds: list[float] | None = None, steps: list[int] | None = None):
        self.folder, self.seconds, self.steps = folder, seconds or [], steps or []
        folder.mkdir(parents=True, exist_ok=True)

    def on_fit_start(self, loop) -> None:
        self.seconds = [m for m in self.seconds if m > loop.seconds]
        self.steps = [m for m in self.steps if m > loop.steps_done]

    def on_step_end(self, loop, loss: float) -> None:
        due = False
        while self.seconds and loop.seconds >= self.seconds[0]:
            self.seconds.pop(0)
            due = True
        while self.steps and loop.steps_done >= self.steps[0]:
            self.steps.pop(0)
            due = True
        if due:
            name = f"t{loop.seconds:09.1f}-s{loop.steps_done:09d}.safetensors"
            save_weights(loop.model, self.folder / name, seconds=loop.seconds, steps=loop.steps_done,
                         epochs=loop.epochs_done)


class SessionLimit(vaekit.Callback):
    """Asks the loop to stop (after the current epoch, with its checkpoint) once this
    session has trained ``hours``: a long protocol then goes on in a later session."""

    def __init__(self, hours: float):
        self.seconds, self.start = 3600.0 * hours, time.monotonic()

    def on_step_end(self, loop, loss: float) -> None:
        if time.monotonic() - self.start >= self.seconds:
            loop.stop()


# ---------------------------------------------------------------------- one reproduction
def reproduce(name: str, args) -> dict:
    preset = presets.load(name)
    quick = args.quick
    changed = dict(args.settings)
    label = " ".join([name, *_spelled(changed)])
    out = _out(name, args)
    run_dir, snaps, record_path = out / "run", out / "snapshots", out / "record.json"
    config = preset.config().override(changed, source="--set").override({"data_dir": args.data_dir})
    record = _read(record_path) or {"preset": name, "sessions": [], "settings_changed": changed}
    if record.get("settings_changed", {}) != changed:
        held = " ".join(_spelled(record.get("settings_changed", {}))) or "nothing"
        raise VaekitError(f"{out} holds a run of {name} with --set {held}, "
                          f"not {' '.join(_spelled(changed)) or 'nothing'}: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    if quick or args.steps:
        config = dataclasses.replace(config, steps=args.steps or 300, time_budget=None).validate()
    if args.threads is not None:
        config = dataclasses.replace(config, threads=args.threads).validate()
    levers = {key: value for key, value in (("precision", args.precision), ("compile", args.compile)) if value}
    config = config.override(levers)
    k, n_test = (100, 1000) if quick else (args.k, args.n_test)
    curve_k, curve_n = (50, 500) if quick else (args.curve_k, args.curve_n)

    torch.set_num_threads(2)
    peak = record.get("gemm_peak_gflops") or common.gemm_peak()
    if "gemm_peak_bf16_gflops" not in record:  # emulated (slower than fp32) where the CPU lacks bf16 units
        # emulated bf16 runs at ~2 GFLOP/s (AVX2 EPYC): one 2048^3 product takes 9 s, so the preset's shape there
        shape = (2048, 2048, 2048) if cpu_bf16_features() else (250, 784, 200)
        record["gemm_peak_bf16_gflops"] = common.gemm_peak(dtype=torch.bfloat16, shape=shape)
        record["gemm_peak_bf16_shape"] = list(shape)
    if args.threads:  # the evaluations too: two runs side by side, evaluating on 2 threads each, took 22 min each
        torch.set_num_threads(args.threads)
    # the published number is the preset's protocol's, not a changed one's
    record.update(preset=name, settings_changed=changed, label=label,
                  published=None if changed else preset.published,
                  metric=preset.meta.get("metric"), measure=preset.measure,
                  quick=quick, config=config.to_dict(), machine=common.machine(), gemm_peak_gflops=peak,
                  command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    _write(record_path, record)

    if not record.get("training_done"):
        snapshot = Snapshots(snaps, None if quick else marks_seconds(),
                             [int(config.steps * f) for f in (0.1, 0.25, 0.5, 0.75)] if quick else None)
        callbacks = [snapshot] + ([SessionLimit(args.hours)] if args.hours else [])
        session = {"started": _now(), "commit": _commit()}
        with common.timed() as region:
            if (run_dir / "checkpoint.safetensors").is_file():
                changes = {"data_dir": args.data_dir, **levers, **({"threads": args.threads} if args.threads else {})}
                resume(run_dir, changes, quiet=args.quiet, figures=False, callbacks=callbacks)
            else:
                train(config, run_dir, overwrite=True, quiet=args.quiet, figures=False, callbacks=callbacks)
        session.update(wall_seconds=region.seconds, others_cpu=region.others, ended=_now())
        record["sessions"].append(session)
        # a session cut short by --hours leaves the budget unspent: the next run continues it
        record["training_done"] = _training_summary(run_dir, load_config(run_dir))["budget_reached"]
        _write(record_path, record)

    record.update(_training_summary(run_dir, load_config(run_dir)))
    curve = {p["file"]: p for p in record.get("curve", [])}
    for path in sorted(snaps.glob("*.safetensors")):
        if path.name not in curve:
            curve[path.name] = {"file": path.name, **_evaluate_snapshot(run_dir, path, curve_k, curve_n)}
            record["curve"] = sorted(curve.values(), key=lambda p: p["seconds"])
            _write(record_path, record)
    final = record.get("final") or {}
    if final.get("importance_samples") != k or final.get("steps", record["steps"]) != record["steps"]:
        with common.timed() as region:  # its finished batches are kept: an interruption costs one
            final = _evaluate(*load_run(run_dir), run_dir, k, n_test, keep=out / "final.partial.safetensors")
        record["final"] = {**final, "steps": record["steps"], "seconds": region.seconds, "others_cpu": region.others}
    final = record["final"]
    value, se = _measured(final, preset.measure)
    record.update(measured=value, measured_se=se, date=datetime.date.today().isoformat(), vaekit=vaekit.__version__)
    _write(record_path, record)
    (out / "final.partial.safetensors").unlink(missing_ok=True)  # the record holds what it kept
    figure = figures(record, out)[0]
    published = record["published"]
    gap = "" if published is None else f" (published {published:.2f}, difference {value - published:+.2f})"
    where = "" if record["budget_reached"] else f" (budget not reached: {record['reached']}; run it again to go on)"
    print(f"{label}: {preset.measure} {value:.2f} ± {se:.2f}{gap}; training {record['training_seconds'] / 60:.1f} min, "
          f"{record['steps']} steps{where}; record {record_path}; figure {figure}")
    if not quick and not args.steps and not changed and not args.no_publish and record.get("budget_reached"):
        atomic_write(presets.RECORDS / f"{name}.json", json.dumps(record, indent=2) + "\n")
        print(f"published the record to {presets.RECORDS / (name + '.json')} (vaekit presets shows it)")
    return record


def redraw(name: str, args) -> list[Path]:
    """The figures again, from the record alone: the results folder's, or else the one the
    package holds (a published run whose folder is not on this machine)."""
    out = _out(name, args)
    record = _read(out / "record.json") or (None if args.settings else _read(presets.RECORDS / f"{name}.json"))
    if not record or "final" not in record:
        raise VaekitError(f"no finished record of {name!r} in {out} or in the package: run it first")
    out.mkdir(parents=True, exist_ok=True)
    drawn = figures(record, out)
    print(f"{name}: drew {', '.join(map(str, drawn))}")
    return drawn


def figures(record: dict, out: Path) -> list[Path]:
    """A record's figures in ``out`` (its run folder ``out/run`` where there is one)."""
    drawn = [nll_figure(record, out / "nll_vs_time.png"),
             validation_figure(record, out / "run", out / "validation_vs_examples.png")]
    return [path for path in drawn if path is not None]


def _training_summary(run_dir: Path, config: Config) -> dict:
    from vaekit.checkpoint import load

    meta = load(run_dir).meta
    rows = read_metrics(run_dir)
    steps = meta.get("steps") or 0
    if config.steps:
        reached = steps >= config.steps
    elif config.time_budget is not None:
        plan = meta.get("plan") or {}
        reached = steps >= plan.get("total_steps", math.inf) or meta["seconds"] >= config.time_budget_seconds
    else:
        reached = meta["epoch"] >= config.epochs
    return {"training_seconds": meta["seconds"], "steps": steps, "epochs": meta["epoch"],
            "epochs_done": rows[-1].get("steps", 0) / max(1, _steps_per_epoch(rows)) if rows else 0,
            "budget_reached": bool(reached), "reached": f"{meta['epoch']} epochs, {steps} steps",
            "plan": meta.get("plan"), "final_lr": rows[-1].get("lr") if rows else None, "seed": config.seed,
            "precision": _trained_precision(run_dir, config)}


def _trained_precision(run_dir: Path, config: Config) -> str:
    """What the run trained at: run.json's precision (``auto`` decided for this machine)."""
    try:
        return RunDirectory(run_dir).read_info().get("precision") or config.precision
    except VaekitError:
        return config.precision


def _steps_per_epoch(rows: list[dict]) -> int:
    return rows[0].get("steps", 1) if rows else 1


def _evaluate_snapshot(run_dir: Path, path: Path, k: int, n: int) -> dict:
    from vaekit.rundir import read_tensors

    config = load_config(run_dir)
    model = build_model(config, tuple(RunDirectory(run_dir).read_info()["event_shape"]))
    from vaekit.rundir import load_state

    tensors, meta = read_tensors(path, "a snapshot")
    load_state(model, tensors, path)  # names, shapes and finiteness checked
    result = _evaluate(model.eval(), config, run_dir, k, n)
    return {"seconds": float(meta["seconds"]), "steps": int(meta["steps"]), "epochs": float(meta["epochs"]), **result}


def _evaluate(model, config: Config, run_dir: Path, k: int, n: int | None, keep: Path | None = None) -> dict:
    """The test set's (first ``n``) scores with K = ``k``; with ``keep``, finished batches are
    kept in that file and an interrupted evaluation goes on from them (vaekit.app.partial)."""
    test = select_split(config, "test", run_dir=run_dir)
    x = test.x if not n else test.x[:n]
    partial = scored = None
    if keep is not None:
        settings = {"importance_samples": k, "seed": 0, "batch_size": examples_per_batch(1000, k)}
        partial, scored = begin(keep, settings, model, x)
        if partial.note:
            print(partial.note, file=sys.stderr)
    try:
        # no mutual information: the record does not keep it, and for an IAF posterior it is hours
        result = vaekit.evaluate(model, x, importance_samples=k, seed=0, mi_examples=0, scored=scored,
                                 on_batch=None if partial is None else partial.on_batch)
    except KeyboardInterrupt:
        if partial is None:
            raise
        raise VaekitError(f"evaluation interrupted: {partial.interrupted()}") from None
    keep = ("n", "elbo", "elbo_se", "log_likelihood", "log_likelihood_se", "kl", "reconstruction", "active_units")
    resumed = {} if scored is None else {"resumed_after": partial.resumed}  # its seconds are this session's
    return {"importance_samples": k, **{key: result.get(key) for key in keep}, **resumed}


def _measured(result: dict, measure: str) -> tuple[float, float]:
    if measure == "nll":
        return -result["log_likelihood"], result["log_likelihood_se"]
    if measure == "loss":
        return -result["elbo"], result["elbo_se"]
    return result["elbo"], result["elbo_se"]


def nll_figure(record: dict, path: Path) -> Path:
    """The measured number against training minutes: the curve (snapshots, fewer samples
    and images), the final K = 5000 point, the published number as a line."""
    from matplotlib.figure import Figure

    measure = record["measure"]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    curve = record.get("curve", [])
    scale, unit = (60.0, "minutes") if record["training_seconds"] >= 300 else (1.0, "seconds")
    if curve:
        xs = [p["seconds"] / scale for p in curve]
        ys = [_measured(p, measure)[0] for p in curve]
        k, n = curve[0]["importance_samples"], curve[0]["n"]
        ax.plot(xs, ys, "o-", color="#1f77b4", label=f"snapshots (K = {k}, first {n} test images)")
    final = record["final"]
    ax.plot([record["training_seconds"] / scale], [_measured(final, measure)[0]], "s", color="#d62728",
            label=f"final (K = {final['importance_samples']}, {final['n']} test images)")
    if record.get("published") is not None:
        ax.axhline(record["published"], color="grey", linestyle="--", label=f"published {record['published']:.2f}")
    label = {"nll": "test NLL (nats)", "loss": "test loss = −ELBO (nats)", "elbo": "test ELBO (nats)"}[measure]
    ax.set_xlabel(f"training time ({unit})")
    ax.set_ylabel(label)
    if len(curve) > 2 and measure != "elbo":
        ys = [_measured(p, measure)[0] for p in curve[1:]] + [_measured(final, measure)[0]]
        top = max(ys) + 2
        low = min([*ys, record.get("published") or math.inf]) - 1
        ax.set_ylim(low, top)
    others = max((s.get("others_cpu", 0.0) for s in record.get("sessions", [])), default=0.0)
    ax.set_title(f"{record.get('label', record['preset'])}{' (quick check)' if record.get('quick') else ''}\n"
                 f"{record['machine']['cores']} cores, others took up to {100 * others:.0f} % of the CPU", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def validation_figure(record: dict, run_dir: Path, path: Path) -> Path | None:
    """Each epoch's validation ELBO against the training examples seen, on a log axis: the
    axes of Kingma & Welling's Fig. 2 (their lower bound on the test set, which is what a
    preset with ``validation_split = "test"`` validates on)."""
    from matplotlib.figure import Figure

    config = record["config"]
    batch = config["batch_size"]
    rows = [r for r in read_metrics(run_dir) if isinstance(r.get("validation_elbo"), (int, float))]
    if rows:
        points = [(r["steps"] * batch, r["validation_elbo"]) for r in rows]
        where = ("the test set" if config.get("validation_split") == "test"
                 else f"{100 * config.get('validation_fraction', 0):.2g} % of the training images, held out")
        title, ylabel = f"the ELBO after each epoch on {where}", "ELBO (nats), one sample per image"
    else:  # the run folder is gone (a published record alone): the snapshots' ELBO instead
        curve = record.get("curve") or []
        if not curve:
            return None
        points = [(p["steps"] * batch, p["elbo"]) for p in curve]
        title = f"the ELBO of each snapshot on the first {curve[0]['n']} test images"
        ylabel = f"ELBO (nats), mean of {curve[0]['importance_samples']} samples per image"
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    ax.plot([x for x, _ in points], [y for _, y in points], "-" if rows else "o-", color="#1f77b4", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{record.get('label', record['preset'])}: {title}\n"
                 f"last {points[-1][1]:.2f} after {points[-1][0]:.3g} examples", fontsize=9)
    values = [value for _, value in points]
    ax.set_ylim(max(min(values), max(values) - 50) - 1, max(values) + 1)  # the first epochs' bounds dwarf the rest
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------- estimates
def estimate(names: list[str], args) -> list[dict]:
    """Steps per second of each preset over a short run here, and the projected durations
    of its full protocol (training; the K = 5000 evaluation from a sample of test images)."""
    rows = []
    for name in names:
        config = presets.load(name).config().override({"data_dir": args.data_dir})
        steps = args.estimate_steps
        with tempfile.TemporaryDirectory() as folder:
            short = dataclasses.replace(config, steps=steps, time_budget=None, checkpoint_every=0,
                                        checkpoint_minutes=0.0, validation_fraction=0.0,
                                        validation_split="fraction", patience=0).validate()
            if args.threads is not None:
                short = dataclasses.replace(short, threads=args.threads).validate()
            with common.timed() as region:
                run = train(short, Path(folder) / "run", quiet=True, figures=False)
            seconds = sum(r["seconds"] for r in read_metrics(run))
            model, cfg = load_run(run)
            test = select_split(cfg, "test", run_dir=run)
            from vaekit.evaluation import per_example

            with common.timed() as eval_region:  # the importance sampling is nearly all of evaluate's time
                per_example(model, test.x[:EVAL_SAMPLE], importance_samples=5000)
        rate = steps / seconds
        per_epoch = math.ceil(round(60000 * (1 - config.validation_fraction)) / config.batch_size) \
            if config.validation_split == "fraction" else math.ceil(60000 / config.batch_size)
        if config.time_budget is not None:
            planned = int(config.time_budget_seconds * rate)
            training = config.time_budget_seconds
        else:
            planned = (config.steps or config.epochs * per_epoch)
            training = planned / rate
        evaluation = eval_region.seconds * len(test) / EVAL_SAMPLE
        row = {"preset": name, "steps_per_second": rate, "others_cpu": region.others,
               "eval_others_cpu": eval_region.others,
               "batch_size": config.batch_size, "steps": planned, "training_hours": training / 3600,
               "evaluation_minutes": evaluation / 60, "measured_steps": steps}
        rows.append(row)
        print(f"{name:<28} {rate:8.1f} steps/s (batch {config.batch_size}, others {100 * region.others:3.0f} % CPU)  "
              f"{planned:>9} steps -> training {training / 3600:7.2f} h, "
              f"evaluation K=5000 ≈ {evaluation / 60:5.1f} min",
              flush=True)
    return rows


# ---------------------------------------------------------------------- helpers
def setting(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE``: the value as TOML reads it (numbers, booleans, lists), else as text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _out(name: str, args) -> Path:
    """The run's folder: --out, or one under RESULTS named for the preset and its --set changes."""
    folder = "+".join([name, *_spelled(dict(args.settings))])
    return args.out or RESULTS / (f"{folder}-quick" if args.quick and not args.redraw else folder)


def _spelled(changed: dict) -> list[str]:
    """``KEY=VALUE`` for each --set change: the record's label, its folder's name, the messages."""
    return [f"{key}={value}" for key, value in changed.items()]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write(path: Path, record: dict) -> None:
    atomic_write(path, json.dumps(record, indent=2) + "\n")


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=common.ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=common.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+", help="preset name(s) (vaekit presets lists them)")
    parser.add_argument("--quick", action="store_true", help="300 steps and small evaluations: checks the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="train for this many steps instead of the budget")
    parser.add_argument("--estimate", action="store_true", help="measure steps/s and project durations; no record")
    parser.add_argument("--estimate-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="folder for the run, snapshots, record and figure")
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training and evaluation (default: the preset's, auto)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                        help="train at this precision instead of the preset's (a lever measured side by side)")
    parser.add_argument("--compile", choices=("off", "on", "auto"), default=None,
                        help="torch.compile the objective or not, instead of the preset's")
    parser.add_argument("--set", dest="settings", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="change one of the preset's settings (repeatable), e.g. --set prior=standard: a row "
                             "that compares with the preset's at the same budget; never published into the package")
    parser.add_argument("--k", type=int, default=5000, help="importance samples of the final evaluation")
    parser.add_argument("--n-test", type=int, default=0, help="test images of the final evaluation (0: all)")
    parser.add_argument("--curve-k", type=int, default=1000, help="importance samples per snapshot of the curve")
    parser.add_argument("--curve-n", type=int, default=2000, help="test images per snapshot of the curve")
    parser.add_argument("--hours", type=float, default=None,
                        help="train at most this long in this session, then evaluate where it reached")
    parser.add_argument("--no-publish", action="store_true", help="do not write the record into the package")
    parser.add_argument("--redraw", action="store_true",
                        help="only draw the figures again from the record (the package's where no run is here)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.estimate:
        common.write_json(RESULTS / "estimates.json", {"machine": common.machine(), "date": _now(), "commit": _commit(),
                                                       "rows": estimate(args.presets, args)})
        return
    if args.hours is not None and not args.hours > 0:
        parser.error(f"--hours must be positive, got {args.hours}")
    if len(args.presets) != 1 and args.out is not None:
        parser.error("--out takes one preset")
    for name in args.presets:
        try:
            redraw(name, args) if args.redraw else reproduce(name, args)
        except VaekitError as error:  # an interruption says how to go on: the same command resumes
            hint = "; run the same command to go on" if isinstance(error, Interrupted) else ""
            print(f"{name}: {error}{hint}", file=sys.stderr)
            sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
