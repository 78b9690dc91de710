"""Network bodies: each maps a flat input [B, in] to a flat output [B, out].

The MLP and linear bodies are plain ``nn.Sequential`` stacks; the conv bodies know the image
shape and view the flat vector as an image themselves, so the models never need to know
which body they hold.
"""

from __future__ import annotations

import torch
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


# ---------------------------------------------------------------------- convolutional bodies
# Every conv layer has kernel 4, stride 2, padding 1: it halves (encoder) or doubles
# (decoder) height and width exactly, so an image of side H needs H divisible by 2^layers.


def check_conv_shape(event_shape: tuple[int, ...], channels: list[int]) -> None:
    """Raise :class:`VaekitError` unless ``event_shape`` is [C, H, W] with H and W
    divisible by the stride pattern of ``channels`` (one halving per layer)."""
    from vaekit.errors import VaekitError

    if len(event_shape) != 3:
        raise VaekitError(
            f"the conv architecture needs images shaped [C, H, W]; the data is shaped "
            f"{list(event_shape)} per example (use --architecture mlp for tabular data)"
        )
    step = 2 ** len(channels)
    _, h, w = event_shape
    if h % step or w % step:
        raise VaekitError(
            f"the conv architecture halves the image {len(channels)} time(s) "
            f"(channels {channels}), so height and width must be divisible by {step}; "
            f"the images are {h}x{w} (use fewer --channels)"
        )


class ConvEncoder(nn.Module):
    """Flat [B, C·H·W (+ K)] -> [B, out_dim]: strided convolutions, then one linear layer.

    It takes the flat vector every body takes (so ``VAE.encode`` stays generic) and views it
    as the image; ``extra`` trailing entries (a one-hot label) become constant channels.
    """

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int, channels: list[int],
                 activation: str = "relu", extra: int = 0):
        super().__init__()
        check_conv_shape(image_shape, channels)
        self.image_shape = tuple(image_shape)
        self.extra = extra
        c, h, w = image_shape
        layers: list[nn.Module] = []
        previous = c + extra
        for size in channels:
            layers += [nn.Conv2d(previous, size, 4, 2, 1), _ACTIVATIONS[activation]()]
            previous = size
        self.convs = nn.Sequential(*layers)
        step = 2 ** len(channels)
        self.out = nn.Linear(previous * (h // step) * (w // step), out_dim)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        image = flat[:, : c * h * w].reshape(-1, c, h, w)
        if self.extra:
            label = flat[:, c * h * w :, None, None].expand(-1, self.extra, h, w)
            image = torch.cat([image, label], dim=1)
        return self.out(self.convs(image).flatten(1))


class ConvDecoder(nn.Module):
    """[B, in_dim] -> flat [B, P·C·H·W]: one linear layer, then transposed convolutions
    mirroring :class:`ConvEncoder`. The output channels are P groups of C (parameter-major),
    so the flat output views as [P, C, H, W]."""

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], channels: list[int],
                 activation: str = "relu", params: int = 1):
        super().__init__()
        check_conv_shape(image_shape, channels)
        c, h, w = image_shape
        step = 2 ** len(channels)
        top = channels[-1]
        self.start = (top, h // step, w // step)
        self.inp = nn.Sequential(nn.Linear(in_dim, top * (h // step) * (w // step)),
                                 _ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        sizes = channels[::-1]
        for size, following in zip(sizes, sizes[1:], strict=False):
            layers += [nn.ConvTranspose2d(size, following, 4, 2, 1), _ACTIVATIONS[activation]()]
        layers.append(nn.ConvTranspose2d(sizes[-1], c * params, 4, 2, 1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.inp(z).reshape(-1, *self.start)).flatten(1)
