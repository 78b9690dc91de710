"""The built-in network bodies. Each takes data in its natural shape (images [B, C, H, W],
tables [B, D], latent points [B, L]) and, when built for a conditional model, the class
label y ([B] class indices) as its second argument: the same two-argument convention a
user's own networks follow (see :class:`vaekit.model.VAE`).

The MLP subclasses ``nn.Sequential`` so its parameters keep the names ``0.weight``,
``2.weight``, ... that run directories written by earlier versions hold.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.errors import VaekitError
from vaekit.registry import ACTIVATIONS as ACTIVATION_REGISTRY

# ``ACTIVATIONS[name]()`` builds the torch module the registry names (an unknown name: a VaekitError)
ACTIVATIONS = ACTIVATION_REGISTRY


def _one_hot(y: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(y, classes).to(dtype=like.dtype, device=like.device)


class MLP(nn.Sequential):
    """Linear layers of the ``hidden`` sizes, each followed by ``activation``, from the
    flattened input (with the one-hot label appended when ``num_classes`` > 0) to an output
    viewed as ``out_shape`` per example. No hidden layers: one affine map (with it the VAE
    is probabilistic PCA's linear-Gaussian model). With ``features=True`` it ends at its last
    hidden layer, activated (``out_shape`` is ignored): the features a posterior head reads."""

    def __init__(self, in_features: int, hidden: list[int], out_shape: tuple[int, ...] | int,
                 activation: str = "relu", num_classes: int = 0, *, features: bool = False):
        if features:
            if not hidden:
                raise VaekitError("an MLP that ends at its last hidden layer needs at least one hidden layer")
            out_shape = hidden[-1]
        out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        layers: list[nn.Module] = []
        width = in_features + num_classes
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        if not features:
            layers.append(nn.Linear(width, math.prod(out_shape)))
        super().__init__(*layers)
        self.out_shape, self.num_classes = out_shape, num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        if self.num_classes:
            h = torch.cat([h, _one_hot(y, self.num_classes, h)], dim=-1)
        for layer in self:
            h = layer(h)
        return h.reshape(len(h), *self.out_shape)


# ---------------------------------------------------------------------- convolutional bodies
# Every conv layer has kernel 4, stride 2, padding 1: it halves (encoder) or doubles
# (decoder) height and width exactly, so an image of side H needs H divisible by 2^layers.


def check_conv_shape(event_shape: tuple[int, ...], channels: list[int]) -> None:
    """Raise :class:`VaekitError` unless ``event_shape`` is [C, H, W] with H and W
    divisible by the stride pattern of ``channels`` (one halving per layer)."""
    if len(event_shape) != 3:
        raise VaekitError(
            f"the conv architecture needs images shaped [C, H, W]; the data is shaped "
            f"{list(event_shape)} per example (an MLP suits tabular data)"
        )
    step = 2 ** len(channels)
    _, h, w = event_shape
    if h % step or w % step:
        raise VaekitError(
            f"the conv architecture halves the image {len(channels)} time(s) "
            f"(channels {channels}), so height and width must be divisible by {step}; "
            f"the images are {h}x{w} (use fewer channels)"
        )


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_dim]: strided convolutions, then one linear layer. A
    conditional encoder sees the one-hot label as ``num_classes`` constant extra channels."""

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int, channels: list[int],
                 activation: str = "relu", num_classes: int = 0):
        super().__init__()
        check_conv_shape(image_shape, channels)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        c, h, w = image_shape
        layers: list[nn.Module] = []
        previous = c + num_classes
        for size in channels:
            layers += [nn.Conv2d(previous, size, 4, 2, 1), ACTIVATIONS[activation]()]
            previous = size
        self.convs = nn.Sequential(*layers)
        step = 2 ** len(channels)
        self.out = nn.Linear(previous * (h // step) * (w // step), out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        image = x.reshape(-1, *self.image_shape)
        if self.num_classes:
            _, h, w = self.image_shape
            label = _one_hot(y, self.num_classes, image)[:, :, None, None].expand(-1, -1, h, w)
            image = torch.cat([image, label], dim=1)
        return self.out(self.convs(image).flatten(1))


class ConvDecoder(nn.Module):
    """[B, in_dim] -> [B, C, H, W] (or [B, P, C, H, W] for P parameters per pixel): one
    linear layer, then transposed convolutions mirroring :class:`ConvEncoder`. A conditional
    decoder takes the one-hot label appended to z."""

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], channels: list[int],
                 activation: str = "relu", params: int = 1, num_classes: int = 0):
        super().__init__()
        check_conv_shape(image_shape, channels)
        c, h, w = image_shape
        step = 2 ** len(channels)
        top = channels[-1]
        self.start = (top, h // step, w // step)
        self.num_classes = num_classes
        self.out_shape = ((params,) if params > 1 else ()) + tuple(image_shape)
        self.inp = nn.Sequential(nn.Linear(in_dim + num_classes, top * (h // step) * (w // step)),
                                 ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        sizes = channels[::-1]
        for size, following in zip(sizes, sizes[1:], strict=False):
            layers += [nn.ConvTranspose2d(size, following, 4, 2, 1), ACTIVATIONS[activation]()]
        # output channels are P groups of C (parameter-major), so they view as [P, C, H, W]
        layers.append(nn.ConvTranspose2d(sizes[-1], c * params, 4, 2, 1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, _one_hot(y, self.num_classes, z)], dim=-1)
        out = self.deconvs(self.inp(z).reshape(-1, *self.start))
        return out.reshape(len(out), *self.out_shape)
