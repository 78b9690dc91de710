"""Ex-post Gaussian-mixture sampling, latent traversals and interpolations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from conftest import make_vae
from vaekit.errors import VaekitError
from vaekit.sampling import (
    decode_latents,
    fit_gmm,
    interpolate,
    posterior_means,
    sample_gmm_latents,
    traversal,
)


def test_linear_interpolation_is_evenly_spaced_between_the_ends():
    z0, z1 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 4.0, 0.5])
    path = interpolate(z0, z1, 5)
    assert path.shape == (5, 3)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    steps = path[1:] - path[:-1]
    torch.testing.assert_close(steps, (z1 - z0).expand(4, 3) / 4)


def test_spherical_interpolation_follows_the_great_circle():
    """Ends exact; every point in the plane of z0 and z1; equal angles between
    consecutive points; the norm moves linearly from |z0| to |z1|."""
    z0 = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    z1 = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    path = interpolate(z0, z1, 7, "spherical")
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    normal = torch.linalg.cross(z0, z1)
    torch.testing.assert_close(path @ normal, torch.zeros(7, dtype=torch.float64))
    unit = path / path.norm(dim=1, keepdim=True)
    angles = torch.arccos((unit[1:] * unit[:-1]).sum(1).clamp(-1, 1))
    torch.testing.assert_close(angles, torch.full((6,), math.pi / 2 / 6, dtype=torch.float64))
    torch.testing.assert_close(path.norm(dim=1), torch.linspace(3.0, math.sqrt(2), 7, dtype=torch.float64))


def test_spherical_interpolation_of_parallel_points_falls_back_to_the_line():
    z0 = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(interpolate(z0, 2 * z0, 3, "spherical"), interpolate(z0, 2 * z0, 3))


def test_interpolation_and_traversal_refuse_bad_arguments():
    z = torch.zeros(3)
    with pytest.raises(VaekitError, match="at least 2"):
        interpolate(z, z, 1)
    with pytest.raises(VaekitError, match="linear' or 'spherical"):
        interpolate(z, z, 3, "cubic")
    with pytest.raises(VaekitError, match="does not exist"):
        traversal(z, 3, torch.zeros(2))


def test_traversal_changes_one_coordinate_only():
    z = torch.tensor([0.5, -1.0, 2.0])
    values = torch.linspace(-3, 3, 4)
    path = traversal(z, 1, values)
    torch.testing.assert_close(path[:, 1], values)
    torch.testing.assert_close(path[:, [0, 2]], z[[0, 2]].expand(4, 2))
    assert z.tolist() == [0.5, -1.0, 2.0]  # the start point is not modified


class _IdentityEncoder(nn.Module):
    """encode(x) = N(x, 1): the posterior means are the data themselves."""

    latent_dim = 2
    num_classes = 0

    def encode(self, x, y=None):
        return Independent(Normal(x, torch.ones_like(x)), 1)


def test_gmm_recovers_the_clusters_of_the_posterior_means_and_samples_them_shuffled():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 6.0]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    which = torch.multinomial(weights, 3000, replacement=True, generator=gen)
    x = centres[which] + 0.3 * torch.randn(3000, 2, generator=gen)
    gmm = fit_gmm(_IdentityEncoder(), x, components=3, seed=0)
    order = torch.as_tensor(gmm.means_[:, 0]).argsort()
    torch.testing.assert_close(torch.as_tensor(gmm.means_[order], dtype=torch.float32),
                               centres[[0, 2, 1]], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.as_tensor(gmm.weights_[order], dtype=torch.float32),
                               weights[[0, 2, 1]], atol=0.03, rtol=0)
    z = sample_gmm_latents(gmm, 2000, seed=1)
    assert z.shape == (2000, 2) and z.dtype == torch.float32
    nearest = torch.cdist(z, centres).argmin(1)
    # shuffled: the first 100 draws are not all from one component
    assert len(set(nearest[:100].tolist())) == 3
    shares = torch.bincount(nearest, minlength=3) / 2000.0
    torch.testing.assert_close(shares, weights, atol=0.04, rtol=0)
    torch.testing.assert_close(sample_gmm_latents(gmm, 5, seed=7), sample_gmm_latents(gmm, 5, seed=7))
    with pytest.raises(VaekitError, match="components"):
        fit_gmm(_IdentityEncoder(), x[:2], components=3)


def test_decode_latents_passes_labels_to_a_conditional_model():
    model = make_vae((6,), [8], 2, num_classes=4)
    z = torch.randn(5, 2)
    torch.testing.assert_close(decode_latents(model, z, 3),
                               model.decode_mean(z, torch.full((5,), 3)))
    torch.testing.assert_close(decode_latents(model, z), model.decode_mean(z, torch.arange(5) % 4))
    x = torch.rand(5, 6)
    y = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(posterior_means(model, x, y, batch_size=2), model.encode(x, y).mean)
