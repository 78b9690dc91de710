"""Network bodies: plain ``nn.Sequential`` stacks mapping a flat input to a flat output."""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given ``hidden`` sizes, each followed by ``activation``."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, size), _ACTIVATIONS[activation]()]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def linear(in_dim: int, out_dim: int) -> nn.Sequential:
    """One affine map: with it the VAE is the linear-Gaussian model of probabilistic PCA."""
    return nn.Sequential(nn.Linear(in_dim, out_dim))


def body(
    architecture: str, in_dim: int, out_dim: int, hidden: list[int], activation: str
) -> nn.Sequential:
    if architecture == "linear":
        return linear(in_dim, out_dim)
    return mlp(in_dim, hidden, out_dim, activation)
