"""``vaekit report``: one self-contained HTML file about one run or several side by side.

The page opens offline: plotly's JavaScript (shipped inside the plotly package) and every
figure (the run's PNGs, as data URIs) are inlined, so it needs no network and no other
file. It shows each run's status and config (for several runs, the settings that differ),
the stored evaluations as tables (one per split, runs side by side), interactive training
curves, the log-likelihood-against-K curve where an evaluation stored one, and the run's
figures: the lecture's (a) and (b), reconstructions, samples, traversals, interpolations.

Runs are read only through :mod:`vaekit.runs` (config, metrics, stored evaluations) and
the figure files training and ``vaekit plot`` write; no model is loaded, so a report of
runs whose data are not at hand still works. Figures a run lacks are named with the command
that draws them.
"""

from __future__ import annotations

import base64
import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaekit.app.catalog import finite, true_split
from vaekit.errors import VaekitError

# (file, heading, what it shows, the command that draws it)
FIGURES = (
    ("latent.png", "(a) the latent space", "posterior means μ(x) of the training data, coloured by class",
     "vaekit plot"),
    ("manifold.png", "(b) the learned manifold", "E[x|z] over a grid of the latent plane", "vaekit plot"),
    ("reconstructions.png", "reconstructions", "originals above E[x | z = μ(x)]", "vaekit plot"),
    ("samples.png", "samples", "E[x|z] for z drawn from the prior", "vaekit plot"),
    ("traversals.png", "traversals", "one latent coordinate varied at a time", "vaekit plot"),
    ("interpolations.png", "interpolations", "paths between two encoded examples", "vaekit plot"),
)
LIKELIHOOD_CURVE = "likelihood_curve.png"
# import name -> distribution name of what `vaekit report` and `vaekit explore` need (the
# `app` extra), so that a missing one is named instead of failing with an ImportError
APP_PACKAGES = {"plotly": "plotly", "jinja2": "jinja2", "starlette": "starlette", "uvicorn": "uvicorn"}
TEMPLATE = "report.html.j2"
# What one report embeds at most. A page of 50 MB already opens slowly; vaekit's own figures
# are 30-300 kB (MNIST's latent.png, 20,000 points, about 250 kB), so a figure over 8 MB is
# not one of them and is left out, named, as is any beyond 48 MB of figures in all.
FIGURE_CAP = 8 * 1024**2
FIGURES_CAP = 48 * 1024**2
# Epochs drawn per run in the training curves: 1,000 to 2,000 evenly spaced ones (and the
# last) show a curve's shape; a run's metrics.jsonl may hold a million epochs.
CURVE_POINTS = 1000
CURVE_KEYS = tuple(f"{split}_{term}" for split in ("train", "validation") for term in ("elbo", "reconstruction", "kl"))

# (key, label, format, better): the evaluation table's rows, in the order of `vaekit evaluate`.
# better: +1 higher is better, -1 lower is better, 0 not a score (no highlighting).
ROWS = (
    ("elbo", "ELBO", "{:.3f}", 1),
    ("reconstruction", "  E_q log p(x|z)", "{:.3f}", 0),
    ("kl", "  KL(q(z|x) ‖ p(z))", "{:.3f}", 0),
    ("mutual_information", "    I_q(x; z)", "{:.3f}", 0),
    ("marginal_kl", "    KL(q(z) ‖ p(z))", "{:.3f}", 0),
    ("log_likelihood", "log-likelihood", "{:.3f}", 1),
    ("gap", "gap = log p(x) − ELBO", "{:.3f}", 0),
    ("elbo_local", "ELBO of a per-example Gaussian", "{:.3f}", 1),
    ("amortisation_gap", "  amortisation gap", "{:.3f}", 0),
    ("approximation_gap", "  approximation gap", "{:.3f}", 0),
    ("iwae_bound", "IWAE bound L_k", "{:.3f}", 1),
    ("bits_per_dim", "bits per dim", "{:.4f}", -1),
)


@dataclass
class Run:
    """What the report shows of one run directory."""

    name: str
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> result
    figures: dict[str, str | None] = field(default_factory=dict)  # file name -> data URI
    problems: list[str] = field(default_factory=list)  # what of the run could not be read, and why
    epochs_total: int = 0  # epochs in metrics.jsonl; ``metrics`` holds every ``epochs_stride``-th
    epochs_stride: int = 1


def require_app_packages(command: str, modules: tuple[str, ...] = tuple(APP_PACKAGES)) -> None:
    """Raise a one-line :class:`VaekitError` naming what ``command`` misses, if anything."""
    import importlib.util

    missing = [APP_PACKAGES[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise VaekitError(f"vaekit {command} needs {', '.join(missing)}: pip install 'vaekit[app]'")


def read_curves(run_dir: str | Path, points: int = CURVE_POINTS) -> tuple[list[dict[str, Any]], int, int]:
    """(rows, epochs in all, stride): the training curves' values of every ``stride``-th epoch
    of ``metrics.jsonl`` and the last one, ``points`` to ``2 × points`` rows, read in one
    pass with memory for those rows only (the stride doubles as the file goes on)."""
    from vaekit import rundir

    kept: list[dict[str, Any]] = []
    stride, total, last = 1, 0, None
    for m in rundir.iter_metrics(run_dir):
        last = {"epoch": m["epoch"], **{k: finite(m.get(k)) for k in CURVE_KEYS}}
        if total % stride == 0:
            kept.append(last)
            if len(kept) >= 2 * points:
                kept, stride = kept[::2], stride * 2
        total += 1
    if last is not None and kept[-1] is not last:
        kept.append(last)
    return kept, total, stride


def read_run(run_dir: str | Path, name: str | None = None, budget: list[int] | None = None) -> Run:
    """Everything the report needs from ``run_dir``, read through :mod:`vaekit.runs`. A
    folder that is not a run is an error; a run's damaged file is left out of the report
    and named, with the reason, in ``problems`` (one damaged run must not hide the others).
    ``budget``: the bytes of figures the report may still embed (one list shared by the
    report's runs), taken from as figures are read."""
    from vaekit import rundir
    from vaekit.app import catalog
    from vaekit.app.runs import load_config

    run_dir = Path(run_dir)
    problems = []
    try:
        config = load_config(run_dir).to_dict()
    except VaekitError as err:
        if not (run_dir / rundir.CONFIG).is_file():
            raise  # not a run at all (a mistyped folder): say so and stop
        config, problems = {}, [str(err)]
    summary = catalog.summarise_run(run_dir, name)
    metrics, total, stride = [], 0, 1
    try:
        metrics, total, stride = read_curves(run_dir)
    except VaekitError as err:
        problems.append(str(err))
    run = Run(name or run_dir.resolve().name, run_dir, summary, config, metrics, problems=problems,
              epochs_total=total, epochs_stride=stride)
    for path in sorted(run_dir.glob("evaluation*.json")):
        try:
            result = catalog.read_evaluation(path)
        except VaekitError as err:
            problems.append(f"{path.name} skipped: {err}")
            continue
        if "n" in result:
            run.evaluations[path.name] = result
    for file, *_ in (*FIGURES, (LIKELIHOOD_CURVE,)):
        try:
            run.figures[file] = _data_uri(run_dir / file, budget)
        except VaekitError as err:
            run.figures[file] = None
            problems.append(f"{file} left out: {err}")
    if summary["problem"]:  # the table's own reading, where it found more
        problems[:0] = [p for p in summary["problem"].split("; ") if p not in problems]
    return run


def write_report(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Write the report of ``run_dirs`` to ``output`` (an .html file); return its path."""
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise VaekitError(f"output {output} must end in .html")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise VaekitError(f"output folder {parent} does not exist")
    if not run_dirs:
        raise VaekitError("give at least one run directory")
    require_app_packages("report", ("plotly", "jinja2"))
    from vaekit import rundir

    names = unique_names([Path(r) for r in run_dirs])
    budget = [FIGURES_CAP]
    html = render([read_run(r, n, budget) for r, n in zip(run_dirs, names, strict=True)])
    rundir.atomic_write(output, html)
    return output


def render(runs_: list[Run]) -> str:
    """The report's HTML for already read rundir."""
    import jinja2
    import plotly.offline

    from vaekit import __version__
    from vaekit.app import catalog

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vaekit.app", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    curve_runs = [r for r in runs_ if any("curve" in e for e in r.evaluations.values())]
    return env.get_template(TEMPLATE).render(
        title="vaekit report: " + " vs ".join(r.name for r in runs_),
        runs=runs_,
        several=len(runs_) > 1,
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=__version__,
        plotly_js=plotly.offline.get_plotlyjs(),
        config_rows=config_rows(runs_),
        evaluation_tables=evaluation_tables(runs_),
        training_curves=training_curves_html(runs_),
        likelihood_curves=likelihood_curves_html(curve_runs) if curve_runs else None,
        curve_pngs=[(r.name, r.figures.get(LIKELIHOOD_CURVE)) for r in runs_],
        figures=FIGURES,
        wall_time=catalog.format_wall_time,
    )


def unique_names(paths: list[Path]) -> list[str]:
    """Short names for runs: the folder's name, with parent folders added until they differ."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(set(parts)) or depth >= max(len(p) for p in parts):
            break
        depth += 1
    # the same folder given twice is still two columns: number the repeats
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


# ---------------------------------------------------------------------- tables
def config_rows(runs_: list[Run]) -> list[dict[str, Any]]:
    """One row per setting: its value in each run and whether the runs differ on it."""
    keys = list(dict.fromkeys(k for r in runs_ for k in r.config))
    rows = []
    for key in keys:
        values = [_show_value(r.config.get(key, "—")) for r in runs_]
        rows.append({"key": key, "values": values, "differs": len(set(values)) > 1})
    return rows


def evaluation_tables(runs_: list[Run]) -> list[dict[str, Any]]:
    """The evaluation tables. For several runs, one table per evaluated split with a column
    per run; for one run, one table with a column per split. A column holds that split's
    stored evaluation with the most importance samples (the best estimate at hand)."""
    order = {"test": 0, "validation": 1, "train": 2}
    splits = list(dict.fromkeys(true_split(e, r.config) for r in runs_ for e in r.evaluations.values()))
    splits.sort(key=lambda s: order.get(s, 3))
    if len(runs_) == 1:
        columns = [c for split in splits for c in _columns(runs_, split, by_split=True)]
        return [_table(None, columns)] if columns else []
    return [_table(split, _columns(runs_, split, by_split=False)) for split in splits]


def comparable(run: Run, result: dict[str, Any], split: str) -> tuple:
    """What must match for two evaluations' numbers to compare: the same examples (data, its
    treatment, the split and, for a split drawn from the data, how it was drawn) and the same
    kind of likelihood (a density and a probability do not compare)."""
    c = run.config
    drawn = split == "validation" and c.get("validation_split") != "test"
    return (c.get("data"), c.get("binarize"), c.get("standardize"), c.get("image_size"), c.get("image_mode"),
            c.get("label_column"), c.get("likelihood"), split, result.get("n"),
            # a dynamic binarisation's fixed evaluation draw, and a drawn validation split, follow the seed
            c.get("seed") if drawn or c.get("binarize") == "dynamic" else None,
            c.get("validation_fraction") if drawn else None)


# rows whose value also depends on an estimator's setting: only equal settings compare
ROW_SETTING = {"log_likelihood": "importance_samples", "bits_per_dim": "importance_samples", "iwae_bound": "iwae_k",
               "gap": "importance_samples"}


def _columns(runs_: list[Run], split: str, by_split: bool) -> list[dict[str, Any]]:
    """A column per run (or, ``by_split``, per weights evaluated), each evaluation once, under
    its true split; of several, the one with the most importance samples."""
    columns = []
    for r in runs_:
        chosen = [(f, e) for f, e in r.evaluations.items() if true_split(e, r.config) == split]
        for weights in dict.fromkeys(e.get("weights") or "last" for _, e in chosen):
            mine = [(f, e) for f, e in chosen if (e.get("weights") or "last") == weights]
            file, result = max(mine, key=lambda fe: fe[1].get("importance_samples") or 0)
            title = f"{split} split" if by_split else r.name
            if weights != "last":
                title += f" ({weights} weights)"
            columns.append({"title": title, "file": file, "result": result,
                            "group": comparable(r, result, split)})
    return columns


def _table(split: str | None, columns: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for key, label, fmt, better in ROWS:
        values = [c["result"].get(key) for c in columns]
        if all(v is None for v in values):
            continue
        cells = [_cell(c["result"], key, fmt) for c in columns]
        best = _best_in_groups(columns, key, values, better) if split is not None and len(columns) > 1 else None
        rows.append({"key": key, "label": label, "cells": cells, "best": best})
    units = [_active_units(c["result"]) for c in columns]
    if any(u != "—" for u in units):
        rows.append({"key": "active_units", "label": "active units (Cov_x E_q[z_u] > 0.01)",
                     "cells": units, "best": None})
    info = [{"n": c["result"].get("n"), "k": c["result"].get("importance_samples"),
             "iwae_k": c["result"].get("iwae_k"), "file": c["file"],
             "note": c["result"].get("bits_per_dim_note")} for c in columns]
    return {"split": split, "columns": columns, "rows": rows, "info": info}


def _cell(result: dict[str, Any], key: str, fmt: str) -> str:
    value, se = result.get(key), result.get(f"{key}_se")
    if not isinstance(value, int | float):
        return "—"
    shown = fmt.format(value)
    return f"{shown} ± {fmt.format(se)}" if isinstance(se, int | float) else shown


def _best_in_groups(columns: list[dict[str, Any]], key: str, values: list[Any], better: int) -> set[int]:
    """The columns to bold: the best of each group of comparable columns (two or more)."""
    setting = ROW_SETTING.get(key)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(columns):
        groups.setdefault((c["group"], c["result"].get(setting) if setting else None), []).append(i)
    best = set()
    for members in groups.values():
        i = _best([values[j] for j in members], better)
        if i is not None:
            best.add(members[i])
    return best


def _best(values: list[Any], better: int) -> int | None:
    scored = [(v * better, i) for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    if better == 0 or len(scored) < 2:
        return None
    return max(scored)[1]


def _active_units(result: dict[str, Any]) -> str:
    units, of = result.get("active_units"), result.get("active_units_of")
    if units is None:
        return "—"
    return f"{units} of {of}" if of is not None else str(units)


def _show_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "—" if value is None else str(value)


# ---------------------------------------------------------------------- plots
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def plotly_text(text: str) -> str:
    """``text`` shown as itself in a plotly label (legend, hover, title): plotly reads its
    labels as a small HTML (``<a href>`` makes a link, ``<b>`` bold) and hover templates
    substitute ``%{...}``; entities are decoded after both, so escaping ``& < > %`` shows
    a run's or a split's name exactly as it is spelt, never as a link."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%", "&#37;"))


def training_curves_html(runs_: list[Run]) -> str | None:
    """ELBO, reconstruction term and KL per epoch (train solid, validation dashed), one
    colour per run, as an interactive plotly figure; None when no run has metrics."""
    from plotly.subplots import make_subplots

    if not any(r.metrics for r in runs_):
        return None
    terms = (("elbo", "ELBO"), ("reconstruction", "E_q log p(x|z)"), ("kl", "KL(q(z|x) ‖ p(z))"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in terms], horizontal_spacing=0.07)
    for i, r in enumerate(runs_):
        colour = COLOURS[i % len(COLOURS)]
        name = plotly_text(r.name)
        epochs = [m["epoch"] for m in r.metrics]
        for col, (term, _) in enumerate(terms, 1):
            for split, dash in (("train", "solid"), ("validation", "dash")):
                key = f"{split}_{term}"
                values = [finite(m.get(key)) for m in r.metrics]  # a gap where one is not a number
                if all(v is None for v in values):
                    continue
                fig.add_scatter(
                    x=epochs, y=values, mode="lines", row=1, col=col,
                    name=f"{name} {split}", legendgroup=f"{i} {split}", showlegend=col == 1,
                    line={"color": colour, "dash": dash},
                    hovertemplate=f"{name}, {split}<br>epoch %{{x}}<br>%{{y:.3f}} nats<extra></extra>",
                )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="nats per example", row=1, col=1)
    fig.update_layout(template="plotly_white", height=380, margin={"l": 60, "r": 20, "t": 40, "b": 50},
                      legend={"orientation": "h", "y": -0.22}, hovermode="closest")
    return fig.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG,
                       div_id="training-curves")


def likelihood_curves_html(runs_: list[Run]) -> str:
    """Left: the importance-sampled estimate against K (± its standard error, log axis) with
    each run's ELBO as a dashed line. Right: the estimate minus the ELBO, the gap as K grows,
    which compares runs whose likelihoods lie far apart."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("log-likelihood estimate and ELBO", "estimate − ELBO (the gap)"))
    ks: set[int] = set()
    for i, r in enumerate(runs_):
        colour = COLOURS[i % len(COLOURS)]
        for file, result in r.evaluations.items():
            curve = result.get("curve")
            if not curve:
                continue
            label = plotly_text(f"{r.name}, {result.get('split', 'data')}")
            group, file = f"{i} {file}", plotly_text(file)
            k = [p["k"] for p in curve]  # checked by catalog.check_evaluation
            estimate = [finite(p["estimate"]) for p in curve]
            errors = {"type": "data", "array": [p.get("se") or 0.0 for p in curve], "visible": True}
            ks.update(k)
            fig.add_scatter(
                x=k, y=estimate, mode="lines+markers", name=f"{label}: log-likelihood estimate",
                line={"color": colour}, error_y=errors, row=1, col=1, legendgroup=group,
                hovertemplate=f"{label}<br>K = %{{x}}<br>%{{y:.3f}} nats<extra>{file}</extra>",
            )
            elbo = finite(result.get("elbo"))
            if elbo is None:
                continue
            fig.add_scatter(x=[k[0], k[-1]], y=[elbo, elbo], mode="lines", name=f"{label}: ELBO",
                            line={"color": colour, "dash": "dash"}, row=1, col=1, legendgroup=group,
                            hovertemplate=f"{label}: ELBO %{{y:.3f}}<extra></extra>")
            fig.add_scatter(
                x=k, y=[None if e is None else e - elbo for e in estimate], mode="lines+markers", showlegend=False,
                line={"color": colour}, error_y=errors, row=1, col=2, legendgroup=group,
                hovertemplate=f"{label}<br>K = %{{x}}<br>estimate − ELBO %{{y:.3f}} nats<extra>{file}</extra>",
            )
    # ticks at the evaluated K only: a log axis's default minor labels (2, 5, ...) read as K
    fig.update_xaxes(type="log", title_text="importance samples K", tickvals=sorted(ks))
    fig.update_yaxes(title_text="per-example mean (nats)", row=1, col=1)
    fig.update_yaxes(title_text="nats", rangemode="tozero", row=1, col=2)
    fig.update_layout(template="plotly_white", height=400, margin={"l": 60, "r": 20, "t": 40, "b": 50},
                      legend={"orientation": "h", "y": -0.25})
    return fig.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG,
                       div_id="likelihood-curve")


def _data_uri(path: Path, budget: list[int] | None = None) -> str | None:
    """A PNG file as a data URI (inlined, so the report is one file), or None if absent. A
    file over :data:`FIGURE_CAP`, or over what is left of ``budget``, is not read: a
    :class:`VaekitError` says why it is left out."""
    from vaekit import rundir

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as err:
        raise VaekitError(f"cannot read {path}: {err.strerror or err}") from None
    left = FIGURE_CAP if budget is None else min(FIGURE_CAP, budget[0])
    if size > left:
        why = (f"more than the {FIGURE_CAP / 1024**2:.0f} MB a report embeds per figure" if size > FIGURE_CAP
               else f"the report's {FIGURES_CAP / 1024**2:.0f} MB of figures are used up")
        raise VaekitError(f"{size / 1024**2:.1f} MB, {why}; open {path} itself")
    try:
        data = rundir.read_regular(path, "a figure", left)
    except FileNotFoundError:
        return None
    if budget is not None:
        budget[0] -= len(data)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise VaekitError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
