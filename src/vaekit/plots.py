"""The lecture's figures and the usual pictures, drawn with matplotlib into PNG files.

(a) ``latent.png``: every training example's posterior mean, coloured by class.
(b) ``manifold.png``: a grid over the latent plane, decoded in one batched call and tiled.
Plus ``reconstructions.png``, ``samples.png``, ``curves.png``, ``traversals.png`` (one
latent coordinate varied at a time) and ``interpolations.png`` (linear and spherical paths
between two encoded examples). For a conditional model (b) has one panel per class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from vaekit.errors import VaekitError
from vaekit.model import num_classes
from vaekit.posteriors import representative, spread
from vaekit.rundir import FIGURES
from vaekit.sampling import posterior_means

__all__ = ["FIGURES", "draw_all"]


def draw_all(run_dir: str | Path, model, train_x, train_labels, shown_x, shown_labels,
             metrics: list[dict], class_names: list[str] | None = None,
             feature_names: list[str] | None = None, data_units: Callable | None = None,
             train_total: int | None = None) -> list[Path]:
    """Draw every figure of a run into ``run_dir``: figure (a) from the training data
    ``train_x`` (coloured by ``train_labels``, named by ``class_names``; ``train_total``: the
    size of the training set where ``train_x`` is a subset of it), the per-example
    figures from ``shown_x`` (validation or test data); return the paths written. For rows
    of features (``[N, D]`` data, columns named by ``feature_names``) the pictures are plots
    of the features instead of images, their values mapped by ``data_units`` (e.g. undoing a
    standardisation) where given. Matplotlib's object API only: no backend is chosen and no
    global figure state is touched."""
    run_dir = Path(run_dir)
    if shown_x.dim() == 2:
        return _draw_all_tables(run_dir, model, train_x, train_labels, shown_x, shown_labels, metrics,
                                class_names, feature_names, data_units, train_total)
    given = _labels(model, shown_labels)
    # a conditional model decodes the path under one class: join two examples of that class
    second = min(1, len(shown_x) - 1)
    if given is not None:
        same = (given[1:] == given[0]).nonzero()
        second = int(same[0]) + 1 if len(same) else second
    paths = [
        latent_figure(model, train_x, train_labels, run_dir / "latent.png", class_names, train_total),
        manifold_figure(model, run_dir / "manifold.png", class_names=class_names),
        reconstructions_figure(model, shown_x, run_dir / "reconstructions.png", labels=given),
        samples_figure(model, run_dir / "samples.png"),
        traversals_figure(model, shown_x[:1], run_dir / "traversals.png",
                          labels=None if given is None else given[:1]),
        interpolations_figure(model, shown_x[0:1], shown_x[second:second + 1],
                              run_dir / "interpolations.png",
                              labels=None if given is None else given[[0, second]]),
    ]
    if metrics:
        paths.append(curves_figure(metrics, run_dir / "curves.png"))
    return paths


def _labels(model, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The labels to hand a conditional model; unconditional models get none."""
    if not num_classes(model):
        return None
    if labels is None:
        raise VaekitError("this conditional model needs class labels with its data")
    return labels


def _class_colours(k: int):
    """K distinct colours: tab10's (or tab20's) first K in order, not K spread over the whole
    map (tab10 resampled to 3 gave two blues); a continuous map beyond 20."""
    for name, size in (("tab10", 10), ("tab20", 20)):
        if k <= size:
            return ListedColormap(colormaps[name].colors[:k])
    return colormaps["viridis"].resampled(k)


def _class_name(label: int, class_names: list[str] | None) -> str:
    label = int(label)
    return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)


def _figure(**kwargs):
    fig = Figure(**kwargs)
    return fig, fig.subplots()


LEGEND_CLASSES = 20  # classes named in figure (a)'s legend; more get a colour bar
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _z(i: int) -> str:
    """z with a subscript index in one style at any size: z₃, z₂₀."""
    return "z" + str(i).translate(_SUBSCRIPTS)


def _the_rest(d: int) -> str:
    """The coordinates after z₁, z₂ of a d-dimensional latent space: z₃, or z₃…z₂₀."""
    return _z(3) if d == 3 else f"{_z(3)}…{_z(d)}"


def latent_figure(model, x: torch.Tensor, labels: torch.Tensor | None, path: Path,
                  class_names: list[str] | None = None, total: int | None = None) -> Path:
    """Figure (a): posterior means μ (not samples) of all of ``x`` (``total``: the examples in
    the training set where ``x`` is a subset of them, as the title then says); for d > 2 the plane of
    their first two principal components; for d = 1 the means against example index.
    Whenever ``labels`` are given (conditional model or not) the points are coloured by
    class, the classes named by ``class_names`` in the legend (a colour bar beyond
    :data:`LEGEND_CLASSES` classes); the model sees the labels only if it is conditional."""
    mu = posterior_means(model, x, _labels(model, labels)).numpy()
    d = mu.shape[1]
    if d == 1:
        points, axes = np.c_[mu[:, 0], np.arange(len(mu))], ("z", "example index")
        title = "posterior means (1-D latent)"
    elif d == 2:
        points, axes, title = mu, ("z₁", "z₂"), "posterior means in the 2-D latent space"
    else:
        from sklearn.decomposition import PCA

        points = PCA(n_components=2).fit_transform(mu)
        axes = ("principal component 1", "principal component 2")
        title = f"posterior means ({d}-D latent), first two principal components"
    fig, ax = _figure(figsize=(7, 6))
    if labels is not None:
        classes = np.unique(labels.cpu().numpy())
        cmap = _class_colours(len(classes))
        index = np.searchsorted(classes, labels.cpu().numpy())
        if len(classes) <= LEGEND_CLASSES:  # one scatter per class, named in the legend
            order = np.random.default_rng(0).permutation(len(points))  # no class drawn wholly on top
            colours = cmap(index[order])
            ax.scatter(points[order, 0], points[order, 1], c=colours, s=4, alpha=0.7)
            for i, c in enumerate(classes):
                ax.scatter([], [], color=cmap(i), s=16, label=_class_name(c, class_names))
            ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                      fontsize="small", markerscale=1.5)
        else:  # too many for a legend: a colour bar, named where it has room
            sc = ax.scatter(points[:, 0], points[:, 1], c=index, cmap=cmap, s=4, alpha=0.7,
                            vmin=-0.5, vmax=len(classes) - 0.5)
            bar = fig.colorbar(sc, ax=ax, ticks=range(len(classes)))
            bar.ax.set_yticklabels([_class_name(c, class_names) for c in classes])
            bar.set_label("class")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    shown = (f"{len(mu):,} training examples" if total is None or total <= len(mu)
             else f"{len(mu):,} of the {total:,} training examples")
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"{title}\n{shown}")
    return _save(fig, path)


@torch.no_grad()
def manifold_figure(model, path: Path, n: int = 20, label: int | None = None,
                    class_names: list[str] | None = None) -> Path:
    """Figure (b): an n×n grid over the unit square mapped through the inverse Gaussian CDF
    (as in Kingma & Welling), decoded in one batched call. For d > 2 the grid spans z₁, z₂
    with the other coordinates at the prior mean 0; for d = 1 it is a single row.

    A conditional model draws the grid for class ``label``, or (by default) one smaller
    panel per class: the same latent grid decoded under each label."""
    classes = num_classes(model)
    if classes and label is None:
        return _manifold_per_class(model, path, classes, min(n, 10), class_names)
    z, values, rows, cols = _latent_grid(model.latent_dim, n)
    y = None if not classes else torch.full((len(z),), int(label), dtype=torch.long)
    images = _decode(model, z, y)
    fig, ax = _figure(figsize=(8, 8 * rows / cols + 0.8))
    _show_tiles(ax, images, rows, cols, extent=(values[0], values[-1]))
    d = model.latent_dim
    suffix = "" if d <= 2 else f" ({_the_rest(d)} = 0)"
    which = "" if not classes else f", class {_class_name(label, class_names)}"
    ax.set(title=f"decoded latent grid: E[x|z] over Φ⁻¹ of a unit-square grid{suffix}{which}",
           xlabel="z₁", ylabel="z₂" if d > 1 else "")
    return _save(fig, path)


def _latent_grid(d: int, n: int):
    """(z [n·n or n, d], the per-axis values, rows, cols) of figure (b)'s grid."""
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
    values = torch.distributions.Normal(0.0, 1.0).icdf(u)
    if d == 1:
        return values[:, None], values, 1, n
    z = torch.zeros(n * n, d)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    z[:, 0], z[:, 1] = z1.reshape(-1), z2.reshape(-1)
    return z, values, n, n


def _manifold_per_class(model, path: Path, classes: int, n: int, class_names: list[str] | None = None) -> Path:
    z, _, rows, cols = _latent_grid(model.latent_dim, n)
    per_row = min(classes, 5)
    grid_rows = -(-classes // per_row)
    fig = Figure(figsize=(3 * per_row, 3 * grid_rows + 0.6))
    axes = fig.subplots(grid_rows, per_row, squeeze=False)
    for c, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if c < classes:
            images = _decode(model, z, torch.full((len(z),), c, dtype=torch.long))
            _show_tiles(ax, images, rows, cols)
            ax.set_title(f"class {_class_name(c, class_names)}")
    fig.suptitle("decoded latent grid per class: E[x|z, y] over the same grid of (z₁, z₂)")
    return _save(fig, path)


@torch.no_grad()
def reconstructions_figure(
    model, x: torch.Tensor, path: Path, n: int = 10, labels: torch.Tensor | None = None,
    feature_names: list[str] | None = None, data_units: Callable | None = None,
) -> Path:
    """Originals (top row) above their reconstructions E[x | z = μ(x)] (bottom row); for rows
    of features, each feature's reconstruction against its original value, one panel per
    feature."""
    from vaekit.sampling import reconstruct

    originals = x[:n]
    recon = reconstruct(model, originals, None if labels is None else labels[:n])
    if originals.dim() == 2:
        return _feature_scatter(_units(originals, data_units), _units(recon, data_units), path, feature_names)
    fig, ax = _figure(figsize=(max(6, n * 0.9), 2.6))
    _show_tiles(ax, torch.cat([originals, recon]), 2, len(originals))
    ax.set(title="reconstructions: originals (top), E[x | z = μ(x)] (bottom)")
    ax.set_axis_off()
    return _save(fig, path)


@torch.no_grad()
def samples_figure(model, path: Path, n: int = 64) -> Path:
    """E[x|z] for z drawn from the prior N(0, I) (a generator seeded with 0)."""
    from vaekit.devices import evaluation_mode

    with evaluation_mode(model, gradients=False):
        images = model.sample(n, generator=torch.Generator().manual_seed(0)).cpu()
    cols = int(np.ceil(np.sqrt(n)))
    fig, ax = _figure(figsize=(7, 7))
    _show_tiles(ax, images, -(-n // cols), cols)
    conditional = num_classes(model)
    which = f", classes 0…{conditional - 1} in turn" if conditional else ""
    prior = "p(z₁|z₂)p(z₂)" if hasattr(model, "z1_dim") else "N(0, I)"
    ax.set(title=f"{n} samples: E[x|z], z ~ {prior}{which}")
    ax.set_axis_off()
    return _save(fig, path)


def curves_figure(metrics: list[dict], path: Path) -> Path:
    """ELBO, reconstruction and KL per epoch, train and validation, in nats per example."""
    epochs = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    for ax, term in zip(axes, ("elbo", "reconstruction", "kl"), strict=True):
        for split, style in (("train", "-"), ("validation", "--")):
            key = f"{split}_{term}"
            if all(m.get(key) is not None for m in metrics):
                ax.plot(epochs, [m[key] for m in metrics], style, label=split)
        ax.set(title={"elbo": "ELBO", "reconstruction": "E_q[log p(x|z)]",
                      "kl": "KL(q(z|x) ‖ p(z))"}[term], xlabel="epoch", ylabel="nats per example")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("training curves")
    return _save(fig, path)


def likelihood_curve_figure(result: dict, path: Path) -> Path:
    """The importance-sampled estimate L_K against K (log axis, ± its standard error) with the
    ELBO as a line: the gap log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)) made visible."""
    curve = result["curve"]
    ks = [p["k"] for p in curve]
    estimates = np.array([p["estimate"] for p in curve])
    errors = np.array([p["se"] or 0.0 for p in curve])
    fig, ax = _figure(figsize=(7, 4.5))
    ax.errorbar(ks, estimates, yerr=errors, marker="o", capsize=3,
                label="importance-sampled estimate (mean of log (1/K) Σ w)")
    ax.axhline(result["elbo"], color="C3", linestyle="--", label="ELBO")
    if len(ks) > 1:
        ax.annotate("", xy=(ks[-1], estimates[-1]), xytext=(ks[-1], result["elbo"]),
                    arrowprops={"arrowstyle": "<->", "color": "0.3"})
        ax.text(ks[-1], (estimates[-1] + result["elbo"]) / 2, f"gap {result['gap']:.3f}  ",
                ha="right", va="center")
    ax.set_xscale("log")
    ax.set(xlabel="importance samples K", ylabel="per-example mean (nats)",
           title=f"log-likelihood estimate vs K, {result.get('split', 'data')} "
                 f"({result['n']} examples)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left")
    return _save(fig, path)


@torch.no_grad()
def traversals_figure(
    model, x: torch.Tensor, path: Path, labels: torch.Tensor | None = None,
    dims: list[int] | None = None, steps: int = 9, width: float = 3.0,
) -> Path:
    """Latent traversals: starting from the posterior mean of ``x[0]``, each row varies one
    latent coordinate over [−width, width] (prior standard deviations), the others fixed.
    By default the rows are the (up to 10) coordinates the encoder uses most (smallest mean
    posterior variance on ``x``: the ones that carry information)."""
    from vaekit.sampling import decode_latents, encode_posterior, traversal

    q = encode_posterior(model, x[:1], None if labels is None else labels[:1])
    start = representative(q)[0].cpu()
    if dims is None:
        order = torch.argsort(spread(q)[0].cpu())
        dims = sorted(order[: min(10, model.latent_dim)].tolist())
    values = torch.linspace(-width, width, steps)
    z = torch.cat([traversal(start, d, values) for d in dims])
    y = None if labels is None else int(labels[0])
    images = decode_latents(model, z, y)
    fig, ax = _figure(figsize=(max(5, steps * 0.8), 0.8 * len(dims) + 1.0))
    _show_tiles(ax, images, len(dims), steps)
    ax.set_title(f"traversals from μ(x): rows vary z{', z'.join(str(d + 1) for d in dims)} "
                 f"over [−{width:g}, {width:g}]", fontsize=9)
    ax.set_axis_off()
    return _save(fig, path)


@torch.no_grad()
def interpolations_figure(
    model, x0: torch.Tensor, x1: torch.Tensor, path: Path, labels: torch.Tensor | None = None,
    steps: int = 10,
) -> Path:
    """Decoded paths between the posterior means of ``x0`` and ``x1`` (one example each):
    top row linear, bottom row spherical interpolation; the originals at the two ends."""
    from vaekit.sampling import decode_latents, encode_posterior, interpolate

    y0 = y1 = None
    if labels is not None:
        y0, y1 = labels[:1], labels[1:2]
    z0 = representative(encode_posterior(model, x0[:1], y0))[0].cpu()
    z1 = representative(encode_posterior(model, x1[:1], y1))[0].cpu()
    rows = []
    for method in ("linear", "spherical"):
        path_z = interpolate(z0, z1, steps, method)
        # a conditional model keeps the first example's class along the path
        decoded = decode_latents(model, path_z, None if y0 is None else int(y0[0]))
        rows.append(torch.cat([x0[:1], decoded, x1[:1]]))
    fig, ax = _figure(figsize=(max(6, (steps + 2) * 0.8), 2.6))
    _show_tiles(ax, torch.cat(rows), 2, steps + 2)
    ax.set_title("interpolation between two encoded examples (ends: the originals)\n"
                 "top: linear, bottom: spherical", fontsize=9)
    ax.set_axis_off()
    return _save(fig, path)


def tile(images: torch.Tensor, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] (or [N, D], drawn as 1×D strips) -> one [rows·H, cols·W(, 3)] array."""
    images = images.detach().float().cpu()
    if images.dim() == 2:
        images = images[:, None, None, :]
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    n, c, h, w = images.shape
    canvas = torch.ones(c, rows * (h + pad) - pad, cols * (w + pad) - pad)
    for i in range(min(n, rows * cols)):
        r, k = divmod(i, cols)
        canvas[:, r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    return array[..., 0] if c == 1 else np.clip(array, 0, 1)


def _show_tiles(ax, images: torch.Tensor, rows: int, cols: int, extent=None) -> None:
    array = tile(images, rows, cols)
    lo, hi = float(images.min()), float(images.max())
    kwargs = {"cmap": "gray", "vmin": min(lo, 0.0), "vmax": max(hi, 1.0)} if array.ndim == 2 else {}
    if extent is not None and rows > 1:
        a, b = float(extent[0]), float(extent[1])
        ax.imshow(array, extent=(a, b, a, b), aspect="auto", interpolation="nearest", **kwargs)
    else:
        ax.imshow(array, interpolation="nearest", aspect="auto", **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])


def images_figure(images: torch.Tensor, path: Path, title: str = "") -> Path:
    """A square grid of ``images`` ([N, C, H, W] or [N, D]) into a PNG file."""
    cols = int(np.ceil(np.sqrt(len(images))))
    fig, ax = _figure(figsize=(7, 7))
    _show_tiles(ax, images, -(-len(images) // cols), cols)
    ax.set(title=title)
    ax.set_axis_off()
    return _save(fig, path)


def _decode(model, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    from vaekit.sampling import decode_latents

    return decode_latents(model, z, y)


def _save(fig: Figure, path: Path) -> Path:
    from vaekit.rundir import write_output

    path = Path(path)
    fig.tight_layout()
    # rendered in memory, then renamed into place: never a half-written PNG
    write_output(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    return path


# ---------------------------------------------------------------------- rows of features
MAX_PANELS = 16  # features drawn one panel each (the title says how many more there are)


def _draw_all_tables(run_dir: Path, model, train_x, train_labels, shown_x, shown_labels, metrics,
                     class_names, feature_names, data_units, train_total=None) -> list[Path]:
    given = _labels(model, shown_labels)
    second = min(1, len(shown_x) - 1)
    if given is not None:
        same = (given[1:] == given[0]).nonzero()
        second = int(same[0]) + 1 if len(same) else second
    pick = None if given is None else given[[0, second]]
    names = {"feature_names": feature_names, "data_units": data_units}
    paths = [
        latent_figure(model, train_x, train_labels, run_dir / "latent.png", class_names, train_total),
        manifold_figure_features(model, run_dir / "manifold.png", class_names=class_names, **names),
        reconstructions_figure(model, shown_x, run_dir / "reconstructions.png", n=2000, labels=given, **names),
        # the model's draws against the data it was fitted to (the larger set, not the held-out one)
        samples_figure_features(model, train_x[:2000], run_dir / "samples.png", **names),
        traversals_figure_features(model, shown_x[:1], run_dir / "traversals.png",
                                   labels=None if given is None else given[:1], **names),
        interpolations_figure_features(model, shown_x[0:1], shown_x[second:second + 1],
                                       run_dir / "interpolations.png", labels=pick, **names),
    ]
    if metrics:
        paths.append(curves_figure(metrics, run_dir / "curves.png"))
    return paths


def _units(x: torch.Tensor, data_units: Callable | None) -> np.ndarray:
    """Model-space rows as float64 numpy, in the data's units where a map is given."""
    x = x.detach().cpu()
    return (x if data_units is None else data_units(x)).double().numpy()


def feature_names_for(d: int, names: list[str] | None) -> list[str]:
    """The columns' names, or x1 … xD where the data have none."""
    return list(names) if names and len(names) == d else [f"x{j + 1}" for j in range(d)]


def _panels(count: int, width: float = 2.6, height: float = 2.4):
    cols = min(count, 4)
    rows = -(-count // cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.7))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:count])


def _feature_panels(d: int, feature_names: list[str] | None, width: float = 2.6):
    """A figure with one panel per feature shown (the first MAX_PANELS of ``d``), each titled
    with its feature's name: ``(fig, [(axes, feature index)], note on features left out)``."""
    names = feature_names_for(d, feature_names)
    shown = list(range(min(d, MAX_PANELS)))
    note = "" if d <= MAX_PANELS else f" (first {MAX_PANELS} of {d} features)"
    fig, axes = _panels(len(shown), width=width)
    for ax, j in zip(axes, shown, strict=True):
        ax.set_title(_short(names[j]), fontsize=9)
        ax.tick_params(labelsize=7)
    return fig, list(zip(axes, shown, strict=True)), note


def _feature_scatter(originals: np.ndarray, recon: np.ndarray, path: Path,
                     feature_names: list[str] | None) -> Path:
    """Each feature's reconstruction E[x | z = μ(x)] against its original value, with the
    diagonal (perfect reconstruction) and R² (1 − residual / total variance)."""
    a, b = originals, recon
    fig, panels, note = _feature_panels(a.shape[1], feature_names)
    for ax, j in panels:
        ax.scatter(a[:, j], b[:, j], s=6, alpha=0.5)
        lo, hi = min(a[:, j].min(), b[:, j].min()), max(a[:, j].max(), b[:, j].max())
        ax.plot([lo, hi], [lo, hi], color="0.4", linewidth=0.8, linestyle="--")
        total = ((a[:, j] - a[:, j].mean()) ** 2).sum()
        r2 = 1 - ((a[:, j] - b[:, j]) ** 2).sum() / total if total > 0 else float("nan")
        ax.set_title(f"{ax.get_title()}\nR² {r2:.2f}", fontsize=9)
    panels[0][0].set(xlabel="original", ylabel="reconstruction")
    fig.suptitle(f"reconstructions E[x | z = μ(x)] against the originals, {len(a)} examples{note}")
    return _save(fig, path)


@torch.no_grad()
def samples_figure_features(model, x: torch.Tensor | None, path: Path, feature_names: list[str] | None = None,
                            n: int = 2000, samples: torch.Tensor | None = None,
                            data_units: Callable | None = None, title: str | None = None) -> Path:
    """Each feature's distribution: draws x ~ p(x|z), z ~ the prior (a generator seeded with
    0), against the data ``x`` where given. ``samples``: draws already made."""
    from vaekit.devices import evaluation_mode

    if samples is None:
        with evaluation_mode(model, gradients=False):
            samples = model.sample(n, mean=False, generator=torch.Generator().manual_seed(0))
    drawn = _units(samples, data_units)
    data = None if x is None else _units(x, data_units)
    fig, panels, note = _feature_panels(drawn.shape[1], feature_names)
    count = len(drawn) if data is None else min(len(drawn), len(data))
    for ax, j in panels:
        values = drawn[:, j] if data is None else np.concatenate([drawn[:, j], data[:, j]])
        lo, hi = np.quantile(values, [0.005, 0.995])  # a few wild draws would squash the rest
        edges = int(np.clip(2 * np.sqrt(count), 8, 40))  # as many bins as the smaller set fills
        bins = np.linspace(lo, hi, edges) if hi > lo else edges
        if data is not None:
            ax.hist(data[:, j], bins=bins, density=True, color="0.75", label="data")
        ax.hist(drawn[:, j], bins=bins, density=True, histtype="step", linewidth=1.4, color="C0",
                label="samples")
        ax.set_yticks([])
    panels[0][0].legend(fontsize=7)
    against = "" if data is None else f", against {len(data)} training rows"
    fig.suptitle((title or f"{len(drawn)} samples x ~ p(x|z), z ~ the prior") + f"{against}{note}")
    return _save(fig, path)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


@torch.no_grad()
def manifold_figure_features(model, path: Path, feature_names: list[str] | None = None,
                             class_names: list[str] | None = None, n: int = 25,
                             data_units: Callable | None = None) -> Path:
    """Figure (b) for rows of features: each feature's decoded value E[x|z] over a grid of
    (z₁, z₂) (Φ⁻¹ of a unit-square grid; the other coordinates at 0), one heat map per
    feature; for d = 1 each feature against z. A conditional model decodes under class 0."""
    classes = num_classes(model)
    z, values, rows, cols = _latent_grid(model.latent_dim, n)
    y = None if not classes else torch.zeros(len(z), dtype=torch.long)
    decoded = _units(_decode(model, z, y), data_units)
    under = "" if not classes else f", class {_class_name(0, class_names)}"
    if rows == 1:
        fig, panels, note = _feature_panels(decoded.shape[1], feature_names)
        for ax, j in panels:
            ax.plot(values.numpy(), decoded[:, j])
        panels[0][0].set(xlabel="z")
        fig.suptitle(f"decoded E[x|z] along the 1-D latent space{under}{note}")
        return _save(fig, path)
    fig, panels, note = _feature_panels(decoded.shape[1], feature_names, width=2.9)
    a, b = float(values[0]), float(values[-1])
    for ax, j in panels:
        image = ax.imshow(decoded[:, j].reshape(rows, cols), extent=(a, b, a, b), aspect="auto",
                          cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    panels[0][0].set(xlabel="z₁", ylabel="z₂")
    d = model.latent_dim
    rest = "" if d <= 2 else f", {_the_rest(d)} = 0"
    fig.suptitle(f"decoded E[x|z] of each feature over the (z₁, z₂) plane{rest}{under}{note}")
    return _save(fig, path)


@torch.no_grad()
def traversals_figure_features(model, x: torch.Tensor, path: Path, labels: torch.Tensor | None = None,
                               feature_names: list[str] | None = None, steps: int = 21,
                               width: float = 3.0, data_units: Callable | None = None) -> Path:
    """Latent traversals for rows of features: from the posterior mean of ``x[0]``, each
    feature's decoded value (one panel per feature, on its own scale) as one latent
    coordinate at a time moves over [−width, width] (one line per coordinate, up to 8: those
    the encoder uses most); dotted: the example's own value."""
    from vaekit.sampling import decode_latents, encode_posterior, traversal

    q = encode_posterior(model, x[:1], None if labels is None else labels[:1])
    start = representative(q)[0].cpu()
    dims = sorted(torch.argsort(spread(q)[0].cpu())[: min(8, model.latent_dim)].tolist())
    values = torch.linspace(-width, width, steps)
    y = None if labels is None else int(labels[0])
    decoded = _units(decode_latents(model, torch.cat([traversal(start, d, values) for d in dims]), y), data_units)
    decoded = decoded.reshape(len(dims), steps, -1)
    original = _units(x[:1], data_units)[0]
    fig, panels, note = _feature_panels(decoded.shape[2], feature_names)
    for ax, j in panels:
        for k, d in enumerate(dims):
            ax.plot(values.numpy(), decoded[k, :, j], color=f"C{k % 10}", label=f"z{d + 1}")
        ax.axhline(float(original[j]), color="0.3", linestyle=":", linewidth=1)
    panels[0][0].set(xlabel="latent coordinate's value")
    panels[0][0].legend(fontsize=7)
    fig.suptitle(f"traversals from μ(x): each feature as one latent coordinate moves over [−{width:g}, {width:g}] "
                 f"(dotted: the example's value){note}", fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def interpolations_figure_features(model, x0: torch.Tensor, x1: torch.Tensor, path: Path,
                                   labels: torch.Tensor | None = None,
                                   feature_names: list[str] | None = None, steps: int = 21,
                                   data_units: Callable | None = None) -> Path:
    """Decoded paths between the posterior means of two rows, one panel per feature: linear
    (solid) and spherical (dashed) interpolation, the two original rows as dots at the ends."""
    from vaekit.sampling import decode_latents, encode_posterior, interpolate

    y0 = y1 = None
    if labels is not None:
        y0, y1 = labels[:1], labels[1:2]
    z0 = representative(encode_posterior(model, x0[:1], y0))[0].cpu()
    z1 = representative(encode_posterior(model, x1[:1], y1))[0].cpu()
    label = None if y0 is None else int(y0[0])
    paths = {m: _units(decode_latents(model, interpolate(z0, z1, steps, m), label), data_units)
             for m in ("linear", "spherical")}
    ends = _units(torch.cat([x0[:1], x1[:1]]), data_units)
    t = np.linspace(0, 1, steps)
    fig, panels, note = _feature_panels(ends.shape[1], feature_names)
    for ax, j in panels:
        ax.plot(t, paths["linear"][:, j], color="C0", label="linear")
        ax.plot(t, paths["spherical"][:, j], color="C1", linestyle="--", label="spherical")
        ax.plot([0, 1], ends[:, j], "o", color="0.2", markersize=4, label="original rows")
    panels[0][0].set(xlabel="along the path (0: first row, 1: second)")
    panels[0][0].legend(fontsize=7)
    fig.suptitle(f"interpolation between two encoded rows, decoded: linear (solid), spherical (dashed); "
                 f"dots: the two rows{note}", fontsize=10)
    return _save(fig, path)
