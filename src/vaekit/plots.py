"""The lecture's figures and the usual pictures, drawn with matplotlib into PNG files.

(a) ``latent.png``: every training example's posterior mean, coloured by class.
(b) ``manifold.png``: a grid over the latent plane, decoded in one batched call and tiled.
Plus ``reconstructions.png``, ``samples.png``, ``curves.png``, ``traversals.png`` (one
latent coordinate varied at a time) and ``interpolations.png`` (linear and spherical paths
between two encoded examples). For a conditional model (b) has one panel per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from vaekit.errors import VaekitError
from vaekit.rundir import FIGURES

__all__ = ["FIGURES", "draw_all"]


def draw_all(run_dir: str | Path, model, train_x, train_labels, shown_x, shown_labels,
             metrics: list[dict]) -> list[Path]:
    """Draw every figure of a run into ``run_dir``: figure (a) from the training data
    ``train_x`` (coloured by ``train_labels``), the per-example figures from ``shown_x``
    (validation or test data); return the paths written. Matplotlib's object API only: no
    backend is chosen and no global figure state is touched."""
    run_dir = Path(run_dir)
    given = _labels(model, shown_labels)
    # a conditional model decodes the path under one class: join two examples of that class
    second = min(1, len(shown_x) - 1)
    if given is not None:
        same = (given[1:] == given[0]).nonzero()
        second = int(same[0]) + 1 if len(same) else second
    paths = [
        latent_figure(model, train_x, train_labels, run_dir / "latent.png"),
        manifold_figure(model, run_dir / "manifold.png"),
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


def posterior_means(
    model, x: torch.Tensor, batch_size: int = 2000, labels: torch.Tensor | None = None
) -> torch.Tensor:
    from vaekit.sampling import posterior_means as means

    return means(model, x, labels, batch_size)


def _labels(model, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The labels to hand a conditional model; unconditional models get none."""
    if not getattr(model, "num_classes", 0):
        return None
    if labels is None:
        raise VaekitError("this conditional model needs class labels with its data")
    return labels


def _figure(**kwargs):
    fig = Figure(**kwargs)
    return fig, fig.subplots()


def latent_figure(model, x: torch.Tensor, labels: torch.Tensor | None, path: Path) -> Path:
    """Figure (a): posterior means μ (not samples) of all of ``x``; for d > 2 the plane of
    their first two principal components; for d = 1 the means against example index."""
    mu = posterior_means(model, x, labels=_labels(model, labels)).cpu().numpy()
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
        classes = np.unique(labels.numpy())
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"].resampled(len(classes))
        index = np.searchsorted(classes, labels.numpy())
        sc = ax.scatter(points[:, 0], points[:, 1], c=index, cmap=cmap, s=4, alpha=0.7,
                        vmin=-0.5, vmax=len(classes) - 0.5)
        bar = fig.colorbar(sc, ax=ax, ticks=range(len(classes)))
        bar.ax.set_yticklabels([str(c) for c in classes])
        bar.set_label("class")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"{title}\n{len(mu)} training examples")
    return _save(fig, path)


@torch.no_grad()
def manifold_figure(model, path: Path, n: int = 20, label: int | None = None) -> Path:
    """Figure (b): an n×n grid over the unit square mapped through the inverse Gaussian CDF
    (as in Kingma & Welling), decoded in one batched call. For d > 2 the grid spans z₁, z₂
    with the other coordinates at the prior mean 0; for d = 1 it is a single row.

    A conditional model draws the grid for class ``label``, or (by default) one smaller
    panel per class: the same latent grid decoded under each label."""
    classes = getattr(model, "num_classes", 0)
    if classes and label is None:
        return _manifold_per_class(model, path, classes, min(n, 10))
    z, values, rows, cols = _latent_grid(model.latent_dim, n)
    y = None if not classes else torch.full((len(z),), int(label), dtype=torch.long)
    images = _decode(model, z, y)
    fig, ax = _figure(figsize=(8, 8 * rows / cols + 0.8))
    _show_tiles(ax, images, rows, cols, extent=(values[0], values[-1]))
    d = model.latent_dim
    suffix = "" if d <= 2 else f" (z₃…z_{d} = 0)"
    which = "" if not classes else f", class {label}"
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


def _manifold_per_class(model, path: Path, classes: int, n: int) -> Path:
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
            ax.set_title(f"class {c}")
    fig.suptitle("decoded latent grid per class: E[x|z, y] over the same grid of (z₁, z₂)")
    return _save(fig, path)


@torch.no_grad()
def reconstructions_figure(
    model, x: torch.Tensor, path: Path, n: int = 10, labels: torch.Tensor | None = None
) -> Path:
    """Originals (top row) above their reconstructions E[x | z = μ(x)] (bottom row)."""
    from vaekit.sampling import reconstruct

    originals = x[:n]
    recon = reconstruct(model, originals, None if labels is None else labels[:n])
    fig, ax = _figure(figsize=(max(6, n * 0.9), 2.6))
    _show_tiles(ax, torch.cat([originals, recon]), 2, len(originals))
    ax.set(title="reconstructions: originals (top), E[x | z = μ(x)] (bottom)")
    ax.set_axis_off()
    return _save(fig, path)


@torch.no_grad()
def samples_figure(model, path: Path, n: int = 64) -> Path:
    """E[x|z] for z drawn from the prior N(0, I) (a generator seeded with 0)."""
    from vaekit.sampling import eval_mode

    with eval_mode(model):
        images = model.sample(n, generator=torch.Generator().manual_seed(0)).cpu()
    cols = int(np.ceil(np.sqrt(n)))
    fig, ax = _figure(figsize=(7, 7))
    _show_tiles(ax, images, -(-n // cols), cols)
    conditional = getattr(model, "num_classes", 0)
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
    start = q.mean[0].cpu()
    if dims is None:
        order = torch.argsort(q.variance[0].cpu())
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
    z0 = encode_posterior(model, x0[:1], y0).mean[0].cpu()
    z1 = encode_posterior(model, x1[:1], y1).mean[0].cpu()
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
