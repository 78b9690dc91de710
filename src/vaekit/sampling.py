"""Choosing latent points to decode: the ex-post Gaussian mixture, traversals and
interpolations.

The prior p(z) = N(0, I) is what the model was trained to decode, but the aggregate
posterior (where the training data actually land) rarely fills it evenly. The ex-post
density sampler (Ghosh et al. 2020) fits a Gaussian mixture to the training posterior means
and draws z from it instead. Traversals vary one latent coordinate with the others fixed;
interpolations walk between the codes of two examples, along a line or a great circle.
"""

from __future__ import annotations

import numpy as np
import torch

from vaekit.devices import evaluation_mode, model_device
from vaekit.errors import VaekitError
from vaekit.model import labelled, num_classes
from vaekit.posteriors import representative, spread
from vaekit.sources import binarize as binarize_draw


def encode_posterior(model, x: torch.Tensor, labels: torch.Tensor | None = None):
    """q(z|x) for a batch ``x`` (moved to the model's device), in evaluation mode."""
    device = model_device(model)
    with evaluation_mode(model, gradients=False):
        return model.encode(x.to(device), *labelled(None if labels is None else labels.to(device)))


def reconstruct(model, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z = r(x)] for a batch ``x``, on the CPU; r(x) the posterior's representative
    point (:func:`vaekit.posteriors.representative`: μ(x) for a Gaussian)."""
    device = model_device(model)
    y = None if labels is None else labels.to(device)
    with evaluation_mode(model, gradients=False):
        return model.decode_mean(representative(model.encode(x.to(device), *labelled(y))), y).cpu()


def posterior_means(
    model, x: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 2000,
    binarize: torch.Generator | None = None,
) -> torch.Tensor:
    """One latent point per row of ``x``: E[z|x] for a Gaussian posterior, in general its
    representative point (:func:`vaekit.posteriors.representative`: a flow's base mean pushed
    through the flow) ([N, L] on the CPU; x a tensor or a lazily read array);
    ``labels`` for a conditional model; with a ``binarize`` generator each batch is first
    drawn x ~ Bernoulli(x) (data trained with dynamic binarisation)."""
    device = model_device(model)
    parts = []
    with evaluation_mode(model, gradients=False):
        for i in range(0, len(x), batch_size):
            y = None if labels is None else labels[i : i + batch_size].to(device)
            batch = x[i : i + batch_size]
            if binarize is not None:
                batch = binarize_draw(batch, binarize)
            parts.append(representative(model.encode(batch.to(device), *labelled(y))).cpu())
    return torch.cat(parts)


def posterior_parameters(
    model, x: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, log-variances) of q(z|x) for every row of ``x`` (the point:
    ``representative(q)``), in batches, on the CPU ([N, L] each); ``labels`` for a
    conditional model."""
    means, logvars = [], []
    # a flow's transforms run when the point is asked for (an IAF's MADE): inside, not only in encode
    with evaluation_mode(model, gradients=False):
        for i in range(0, len(x), batch_size):
            q = encode_posterior(model, x[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
            means.append(representative(q).cpu())  # a flow's: the base mean through the flow
            logvars.append(torch.log(spread(q)).cpu())  # a flow's variance: estimated from its draws
    return torch.cat(means), torch.cat(logvars)


def fit_gmm(
    model, x: torch.Tensor, components: int = 10, labels: torch.Tensor | None = None,
    seed: int = 0, binarize: torch.Generator | None = None,
):
    """A scikit-learn ``GaussianMixture`` (full covariances) fitted to the posterior means
    of ``x`` (the training data; see :func:`posterior_means` for ``binarize``)."""
    from sklearn.mixture import GaussianMixture

    if components < 1:
        raise VaekitError(f"components must be at least 1, got {components}")
    mu = posterior_means(model, x, labels, binarize=binarize).double().numpy()
    if components > len(mu):
        raise VaekitError(f"cannot fit {components} mixture components to {len(mu)} examples")
    gmm = GaussianMixture(n_components=components, covariance_type="full", reg_covar=1e-5,
                          random_state=seed)
    return gmm.fit(mu)


def sample_gmm_latents(gmm, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` latent points z ~ the fitted mixture, in random order, [n, L] float32."""
    gmm.set_params(random_state=seed)
    z, _ = gmm.sample(n)  # scikit-learn returns them grouped by component
    z = z[np.random.default_rng(seed).permutation(n)]
    return torch.as_tensor(z, dtype=torch.float32)


def decode_latents(
    model, z: torch.Tensor, y: torch.Tensor | int | None = None, mean: bool = True
) -> torch.Tensor:
    """E[x|z] (or a draw x ~ p(x|z) with ``mean=False``) for latent points ``z`` [N, L], on
    the CPU; a conditional model takes the class ``y`` (an int for all, or one label per
    point; without one it cycles through the classes)."""
    device = model_device(model)
    z = z.to(device)
    labels = None
    if y is not None:
        labels = torch.as_tensor(y, dtype=torch.long).expand(len(z)).to(device)
    elif num_classes(model):
        labels = (torch.arange(len(z)) % model.num_classes).to(device)
    with evaluation_mode(model, gradients=False):
        out = model.decode_mean(z, labels) if mean else model.decode(z, labels).sample()
    return out.cpu()


def traversal(z: torch.Tensor, dim: int, values: torch.Tensor) -> torch.Tensor:
    """Copies of the latent point ``z`` ([L]) with coordinate ``dim`` set to each of
    ``values``: [len(values), L]. Decode them to see what that coordinate controls."""
    if not 0 <= dim < z.shape[-1]:
        raise VaekitError(f"latent dimension {dim} does not exist (the latent space has {z.shape[-1]})")
    path = z.reshape(1, -1).repeat(len(values), 1)
    path[:, dim] = values
    return path


def interpolate(
    z0: torch.Tensor, z1: torch.Tensor, steps: int = 10, method: str = "linear"
) -> torch.Tensor:
    """``steps`` points from ``z0`` to ``z1`` (both [L], ends included): [steps, L].

    ``linear``: (1−t) z0 + t z1. ``spherical`` (slerp): along the great circle, with the
    norm interpolated too, so intermediate points keep the typical norm of Gaussian draws
    instead of cutting through the low-density centre (White 2016).
    """
    if steps < 2:
        raise VaekitError(f"an interpolation needs at least 2 steps, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype)[:, None]
    if method == "linear":
        return (1 - t) * z0 + t * z1
    if method != "spherical":
        raise VaekitError(f"interpolation method must be 'linear' or 'spherical', got '{method}'")
    n0, n1 = z0.norm(), z1.norm()
    if float(n0.detach()) == 0.0 or float(n1.detach()) == 0.0:
        return (1 - t) * z0 + t * z1
    cos = torch.clamp(torch.dot(z0, z1) / (n0 * n1), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(torch.sin(omega).detach()) < 1e-6:  # (anti)parallel: the great circle is not unique
        return (1 - t) * z0 + t * z1
    u0, u1 = z0 / n0, z1 / n1
    direction = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)
    return direction * ((1 - t) * n0 + t * n1)
