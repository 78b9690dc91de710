"""The lecture's figures and the usual pictures, drawn with matplotlib into PNG files.

(a) ``latent.png``: every training example's posterior mean, coloured by class.
(b) ``manifold.png``: a grid over the latent plane, decoded in one batched call and tiled.
Plus ``reconstructions.png``, ``samples.png`` and ``curves.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

FIGURES = ("latent.png", "manifold.png", "reconstructions.png", "samples.png", "curves.png")


def draw_all(run_dir: str | Path, model, splits: dict, metrics: list[dict]) -> list[Path]:
    """Draw every figure of a run into ``run_dir``; return the paths written."""
    run_dir = Path(run_dir)
    train = splits["train"]
    shown = splits.get("validation") or splits.get("test") or train
    paths = [
        latent_figure(model, train.x, train.labels, run_dir / "latent.png"),
        manifold_figure(model, run_dir / "manifold.png"),
        reconstructions_figure(model, shown.x, run_dir / "reconstructions.png"),
        samples_figure(model, run_dir / "samples.png"),
    ]
    if metrics:
        paths.append(curves_figure(metrics, run_dir / "curves.png"))
    return paths


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode(x[i : i + batch_size]).mean for i in range(0, len(x), batch_size)])


def latent_figure(model, x: torch.Tensor, labels: torch.Tensor | None, path: Path) -> Path:
    """Figure (a): posterior means μ (not samples) of all of ``x``; for d > 2 the plane of
    their first two principal components; for d = 1 the means against example index."""
    mu = posterior_means(model, x).numpy()
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
    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is not None:
        classes = np.unique(labels.numpy())
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20", len(classes))
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
def manifold_figure(model, path: Path, n: int = 20) -> Path:
    """Figure (b): an n×n grid over the unit square mapped through the inverse Gaussian CDF
    (as in Kingma & Welling), decoded in one batched call. For d > 2 the grid spans z₁, z₂
    with the other coordinates at the prior mean 0; for d = 1 it is a single row."""
    model.eval()
    d = model.latent_dim
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
    values = torch.distributions.Normal(0.0, 1.0).icdf(u)
    if d == 1:
        z = values[:, None]
        rows, cols = 1, n
    else:
        z = torch.zeros(n * n, d)
        z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
        z[:, 0], z[:, 1] = z1.reshape(-1), z2.reshape(-1)
        rows, cols = n, n
    images = model.decode_mean(z)
    fig, ax = plt.subplots(figsize=(8, 8 * rows / cols + 0.8))
    _show_tiles(ax, images, rows, cols, extent=(values[0], values[-1]) if d >= 1 else None)
    suffix = "" if d <= 2 else f" (z₃…z_{d} = 0)"
    ax.set(title=f"decoded latent grid: E[x|z] over Φ⁻¹ of a unit-square grid{suffix}",
           xlabel="z₁", ylabel="z₂" if d > 1 else "")
    return _save(fig, path)


@torch.no_grad()
def reconstructions_figure(model, x: torch.Tensor, path: Path, n: int = 10) -> Path:
    """Originals (top row) above their reconstructions E[x | z = μ(x)] (bottom row)."""
    model.eval()
    originals = x[:n]
    recon = model.decode_mean(model.encode(originals).mean)
    fig, ax = plt.subplots(figsize=(max(6, n * 0.9), 2.6))
    _show_tiles(ax, torch.cat([originals, recon]), 2, len(originals))
    ax.set(title="reconstructions: originals (top), E[x | z = μ(x)] (bottom)")
    ax.set_axis_off()
    return _save(fig, path)


@torch.no_grad()
def samples_figure(model, path: Path, n: int = 64) -> Path:
    """E[x|z] for z drawn from the prior N(0, I)."""
    model.eval()
    images = model.sample(n)
    cols = int(np.ceil(np.sqrt(n)))
    fig, ax = plt.subplots(figsize=(7, 7))
    _show_tiles(ax, images, -(-n // cols), cols)
    ax.set(title=f"{n} samples: E[x|z], z ~ N(0, I)")
    ax.set_axis_off()
    return _save(fig, path)


def curves_figure(metrics: list[dict], path: Path) -> Path:
    """ELBO, reconstruction and KL per epoch, train and validation, in nats per example."""
    epochs = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
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
    fig, ax = plt.subplots(figsize=(7, 4.5))
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


def tile(images: torch.Tensor, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] (or [N, D], drawn as 1×D strips) -> one [rows·H, cols·W(, 3)] array."""
    images = images.detach().float()
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


def _save(fig, path: Path) -> Path:
    from vaekit.runs import write_output

    path = Path(path)
    fig.tight_layout()
    try:  # rendered in memory, then renamed into place: never a half-written PNG
        write_output(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
