"""What vaekit needs of a model, and the checks made before it is trained or evaluated.

The protocol (docs/models.md): a model is an ``nn.Module`` with

- ``encode(x)`` (``encode(x, y)`` when ``num_classes > 0``) → q(z|x), a
  ``torch.distributions.Distribution`` with batch shape [B] and event shape [L];
- ``decode(z)`` (``decode(z, y)``) → p(x|z) for z [..., L], batch shape [...] and event shape
  the data's shape per example, so ``log_prob(x)`` is one number per example;
- ``prior`` → p(z), a distribution with event shape [L] (an attribute or property).

Optional: ``num_classes`` (0 if absent), ``latent_dim``, ``event_shape``, ``clamped``.
:class:`vaekit.VAE`, :class:`vaekit.model.TwoLayerVAE` and :class:`vaekit.model.AE` keep it;
so may any module of the user's (an adapter for pytorch/examples' VAE is in docs/models.md).

:func:`check_model` runs one forward pass on a few examples and refuses, with one line, the
mistakes that otherwise train silently: a network that is not an ``nn.Module`` (its weights
would be neither trained nor saved), an encoder whose width does not fit the latent
dimension or the posterior head, a prior over other coordinates than q, a decoder whose
output does not describe data of the data's shape; and it warns when a Bernoulli decoder's
outputs all lie in [0, 1] (probabilities read as logits: a final ``nn.Sigmoid``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent

from vaekit.devices import forked_rng, model_device
from vaekit.errors import VaekitError
from vaekit.model import num_classes
from vaekit.posteriors import representative

_NETWORKS = ("encoder", "decoder", "up", "down", "prior_module", "posterior")
EXAMPLES = 8  # examples the check's forward pass uses


class LogitsWarning(UserWarning):
    """A Bernoulli decoder whose outputs look like probabilities, read as logits."""


def check_model(model, x: torch.Tensor, y: torch.Tensor | None = None, *, trainable: bool = True) -> None:
    """Refuse a model that does not keep vaekit's protocol for data ``x`` (its first
    :data:`EXAMPLES` rows are used; ``y``: their labels for a conditional model), with a
    one-line :class:`VaekitError`; warn (:class:`LogitsWarning`) when a Bernoulli decoder's
    outputs all lie in [0, 1]. ``trainable``: also refuse a model without a trainable
    parameter (what training needs). One forward pass in eval mode without gradients, from a
    forked random state; the model's training mode and torch's generators are left as they
    were."""
    if not isinstance(model, nn.Module):
        raise VaekitError(f"the model must be an nn.Module (its parameters are what is trained and "
                          f"saved); got {type(model).__name__}")
    for name in _NETWORKS:
        part = getattr(model, name, None)
        if part is not None and not isinstance(part, nn.Module):
            raise VaekitError(
                f"the model's {name} is a {type(part).__name__}, not an nn.Module: its weights would be "
                "neither trained nor saved; wrap it in an nn.Module (e.g. nn.Sequential, or a subclass "
                "that holds its layers)")
    missing = [name for name in ("encode", "decode") if not callable(getattr(model, name, None))]
    # looked up, not evaluated: a learned prior's property may need the first forward pass
    if not (hasattr(type(model), "prior") or "prior" in model.__dict__ or "prior" in model._modules):
        missing.append("prior")
    if missing:
        raise VaekitError(f"the model lacks {', '.join(missing)}: vaekit needs encode(x) → q(z|x), "
                          "decode(z) → p(x|z) and prior → p(z) (docs/models.md)")
    if trainable and not any(p.requires_grad for p in model.parameters()):
        raise VaekitError("the model has no trainable parameters: its networks must be nn.Modules "
                          "registered on it (attributes, nn.ModuleList), not plain functions")
    x = x[:EXAMPLES]
    conditional = num_classes(model) > 0
    if conditional and y is None:
        raise VaekitError("this conditional model needs class labels with its data: give (x, labels)")
    labels = (y[:EXAMPLES],) if conditional else ()
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forked_rng(device, 0):
            x = x.to(device)
            labels = tuple(t.to(device) for t in labels)
            _check(model, x, labels)
    finally:
        model.train(was_training)


def _check(model, x: torch.Tensor, labels: tuple) -> None:
    q = model.encode(x, *labels)
    if not isinstance(q, Distribution):
        raise VaekitError(f"encode must return a torch.distributions.Distribution, got {type(q).__name__}")
    batch = len(x)
    if tuple(q.batch_shape) != (batch,) or len(q.event_shape) != 1:
        raise VaekitError(f"encode returned q(z|x) with batch shape {list(q.batch_shape)} and event shape "
                          f"{list(q.event_shape)} for {batch} examples; vaekit needs batch [{batch}] and "
                          "event [latent_dim]")
    width = q.event_shape[0]
    latent_dim = getattr(model, "latent_dim", None)
    if latent_dim is not None and width != latent_dim:
        raise VaekitError(f"the encoder gives q(z|x) over {width} latent coordinates but latent_dim is {latent_dim}")
    prior = getattr(model, "prior_module", None)
    shape = getattr(prior, "input_shape", None)
    if shape is not None and tuple(shape) != tuple(x.shape[1:]):
        raise VaekitError(f"the VampPrior's pseudo-inputs are shaped {list(shape)} but the data's "
                          f"examples are shaped {list(x.shape[1:])}")
    p = model.prior
    if not isinstance(p, Distribution):
        raise VaekitError(f"prior must be a torch.distributions.Distribution, got {type(p).__name__}")
    if tuple(p.event_shape) != (width,) or tuple(p.batch_shape) != ():
        raise VaekitError(f"the prior p(z) has batch shape {list(p.batch_shape)} and event shape "
                          f"{list(p.event_shape)}, but q(z|x) is over {width} latent coordinates: the prior "
                          f"needs batch [] and event [{width}]")
    decoded = model.decode(representative(q), *labels)
    if not isinstance(decoded, Distribution):
        raise VaekitError(f"decode must return a torch.distributions.Distribution, got {type(decoded).__name__}")
    described = (*decoded.batch_shape, *decoded.event_shape)
    if tuple(decoded.batch_shape) != (batch,) or tuple(described) != tuple(x.shape):
        raise VaekitError(
            f"the decoder's output describes data shaped {list(described[1:])} per example "
            f"(p(x|z): batch {list(decoded.batch_shape)}, event {list(decoded.event_shape)}), but the data's "
            f"examples are shaped {list(x.shape[1:])}")
    _warn_on_probabilities(decoded)


def _warn_on_probabilities(decoded: Distribution) -> None:
    base = decoded
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, (Bernoulli, ContinuousBernoulli)) or "logits" not in base.__dict__:
        return
    logits = base.logits
    if logits.numel() and bool(((logits >= 0) & (logits <= 1)).all()):
        warnings.warn(
            "every output of the Bernoulli decoder lies in [0, 1]: they are read as logits "
            "(log-odds), not probabilities; if the decoder ends in nn.Sigmoid, remove it (the "
            "likelihood applies the sigmoid)", LogitsWarning, stacklevel=3)
