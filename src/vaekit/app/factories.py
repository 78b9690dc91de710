"""A config's parts, built: the model, its initialisation, the objective, the optimiser and
the learning-rate schedule. Each is chosen by name from a registry
(:mod:`vaekit.registry`, :data:`ARCHITECTURES` here), never by a chain of ifs.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from pathlib import Path

import torch

from vaekit import nets, rundir
from vaekit.app.config import ARCHITECTURES, Config
from vaekit.errors import VaekitError
from vaekit.likelihoods import make_likelihood
from vaekit.model import VAE
from vaekit.registry import LIKELIHOODS, MODELS, OBJECTIVES, OPTIMIZERS, POSTERIORS, PRIORS, SCHEDULES, Spec


# ---------------------------------------------------------------------- the model
def build_model(config: Config, event_shape: tuple[int, ...]) -> VAE:
    """The model a :class:`Config` describes, for data of ``event_shape``: the networks, the
    likelihood, and the prior and posterior parts (:data:`vaekit.registry.PRIORS`,
    :data:`vaekit.registry.POSTERIORS`; for the two-layer model the prior is p(z2) and the
    posterior head is over z1)."""
    event_shape = tuple(event_shape)
    kind = MODELS[config.model]
    name = "bernoulli" if config.likelihood == "auto" else config.likelihood  # no data to decide by
    likelihood = make_likelihood(name, event_shape, config.sigma_value, config.sigma_min, config.levels)
    params = likelihood.params_per_dim
    classes = config.classes if kind.trait("conditional") else 0
    if kind.trait("conditional") and classes < 1:
        raise VaekitError(f"model '{config.model}' needs the number of classes (classes > 0, or labelled data)")
    latent = config.latent_dim
    architecture = ARCHITECTURES[config.architecture]
    head = posterior_head(config, latent)
    # with a head, the encoder ends at its last hidden layer where it has one (the head owns the
    # amortising linear map); otherwise the encoder's own last linear map outputs the head's parameters
    encoder_out = (head.in_features if head is not None
                   else latent if kind.trait("deterministic") else 2 * latent)
    encoder, decoder = architecture(config, event_shape, encoder_out, params, classes,
                                    features=head is not None and head.amortise is not None)
    if kind.trait("two_layer"):
        z2 = config.latent_dim2 or max(1, latent // 2)
        up = nets.MLP(latent, config.hidden2, 2 * z2, config.activation)
        down = nets.MLP(z2, config.hidden2[::-1], 2 * latent, config.activation)
        return kind(encoder, decoder, likelihood, latent, z2, up, down, event_shape=event_shape,
                    prior=prior_module(config, event_shape, z2, name), posterior=head)
    return kind(encoder, decoder, likelihood, latent, num_classes=classes, event_shape=event_shape,
                prior=prior_module(config, event_shape, latent, name), posterior=head)


def posterior_head(config: Config, latent: int):
    """The config's posterior head over ``latent`` coordinates, or None for the diagonal
    Gaussian read straight from the encoder's [μ, log σ²] (the layout of every earlier run).
    An mlp body with hidden layers hands the head its last hidden layer (the head's own
    linear map amortises, as in the papers); other bodies output the head's parameters."""
    if config.posterior == "diagonal":
        return None
    from vaekit.posteriors import make_posterior

    arch = ARCHITECTURES[config.architecture]
    features = config.hidden[-1] if arch.trait("hidden_features") and config.hidden else None
    settings = {"steps": config.flow_steps, "hidden": config.iaf_hidden, "kind": config.sylvester_kind,
                "vectors": config.sylvester_vectors, "reflections": config.sylvester_reflections}
    options = {k: settings[k] for k in POSTERIORS[config.posterior].trait("options", ())}
    return make_posterior(config.posterior, latent, features=features, **options)


def prior_module(config: Config, event_shape: tuple[int, ...], latent: int, likelihood: str):
    """The config's prior over ``latent`` coordinates; None for the standard normal (the
    model's default, which adds nothing to the state dict). The VampPrior's pseudo-inputs
    start at N(0.05, 0.01²) per pixel (Tomczak & Welling's MNIST default, drawn from the
    seeded initialisation), clipped to [0, 1] for likelihoods of data in [0, 1]."""
    if config.prior == "standard":
        return None
    entry = PRIORS[config.prior]
    if entry.trait("encoder"):
        bounds = (0.0, 1.0) if LIKELIHOODS[likelihood].trait("unit_range") else None
        return entry(event_shape, latent, config.prior_components, bounds=bounds)
    return entry(latent, config.prior_components)


def mlp_bodies(config: Config, event_shape: tuple[int, ...], encoder_out: int, params: int, classes: int,
               hidden: list[int] | None = None, *, features: bool = False):
    """(encoder, decoder) MLPs; the decoder mirrors the encoder's hidden sizes. With
    ``features`` the encoder ends at its last hidden layer (a posterior head reads it)."""
    hidden = config.hidden if hidden is None else hidden
    out_shape = ((params,) if params > 1 else ()) + tuple(event_shape)
    encoder = nets.MLP(math.prod(event_shape), hidden, encoder_out, config.activation, classes, features=features)
    decoder = nets.MLP(config.latent_dim, hidden[::-1], out_shape, config.activation, classes)
    return encoder, decoder


def linear_bodies(config: Config, event_shape: tuple[int, ...], encoder_out: int, params: int, classes: int,
                  *, features: bool = False):
    """Probabilistic PCA's linear maps: MLPs without hidden layers."""
    return mlp_bodies(config, event_shape, encoder_out, params, classes, hidden=[])


def conv_bodies(config: Config, event_shape: tuple[int, ...], encoder_out: int, params: int, classes: int,
                *, features: bool = False):
    """Stride-2 convolutions down, transposed convolutions up."""
    nets.check_conv_shape(event_shape, config.channels)
    encoder = nets.ConvEncoder(event_shape, encoder_out, config.channels, config.activation, classes)
    decoder = nets.ConvDecoder(config.latent_dim, event_shape, config.channels, config.activation, params, classes)
    return encoder, decoder


def build_checked(config: Config, event_shape: tuple[int, ...], stored: dict[str, tuple[int, ...]],
                  where: Path) -> VAE:
    """:func:`build_model`, once the model's tensor shapes (found on the meta device, where
    nothing is allocated) match the ``stored`` ones; refused otherwise."""
    with torch.device("meta"):
        skeleton = build_model(config, event_shape)
    problem = rundir.mismatch(rundir.state_shapes(skeleton), stored)
    if problem:
        raise VaekitError(f"{where}: {problem}")
    return build_model(config, event_shape)


def check_model_size(config: Config, event_shape: tuple[int, ...]) -> None:
    """Refuse a model whose parameters alone would not fit in this machine's memory (a
    typo such as ``hidden = 100000000``), before anything is allocated."""
    with torch.device("meta"):
        skeleton = build_model(config, event_shape)
    # the prior's and posterior's parts are submodules: pseudo-inputs, mixture parameters, the
    # MADEs' weights and their masks (buffers) all count
    tensors = [*skeleton.parameters(), *skeleton.buffers()]
    size = sum(p.numel() * p.element_size() for p in tensors
               if not isinstance(p, torch.nn.parameter.UninitializedParameter))
    memory = _physical_memory()
    if memory and size > memory:
        raise VaekitError(
            f"the model's parameters alone take {size / 1e9:,.1f} GB, more than this machine's "
            f"{memory / 1e9:,.1f} GB of memory; check hidden, latent_dim, channels, prior_components and iaf_hidden"
        )


# The checks below compare what a step or an evaluation batch surely holds with ALL of this
# machine's physical memory, not a fraction of it: the step's estimate is a lower bound, so a
# refused step could never have run, while one that might just fit (with swap, or memory other
# processes free) is left to try. Their purpose is to turn a typo (samples = 100000000) into one
# line naming the setting, before the run starts, instead of an allocator's traceback.
def step_draws(config: Config) -> int:
    """z drawn per example in one training step: ``k`` for the IWAE objective, else ``samples``."""
    return config.k if config.objective == "iwae" else config.samples


def step_memory(config: Config, event_shape: tuple[int, ...], examples: int | None = None) -> int:
    """A lower bound on the bytes one training step holds at once: for each example of the
    batch (no more than the ``examples`` of the training set) and each draw, the draw z and the
    decoder's output (one value per data value at the least), with an MLP decoder's hidden
    activations, in float32, all kept for the backward pass."""
    batch = config.batch_size if examples is None else min(config.batch_size, examples)
    per_draw = config.latent_dim + math.prod(event_shape)
    if config.architecture == "mlp":
        per_draw += sum(config.hidden)
    return 4 * batch * step_draws(config) * per_draw


def check_step_size(config: Config, event_shape: tuple[int, ...], examples: int | None = None) -> None:
    """Refuse a training step that cannot fit in this machine's memory (``samples``, ``k`` or
    ``batch_size`` absurdly large), with the setting to lower, before anything is allocated."""
    memory = _physical_memory()
    need = step_memory(config, event_shape, examples)
    if not memory or need <= memory:
        return
    if not MODELS[config.model].trait("conditional") or config.classes >= 1:  # (classes: from the labels, later)
        check_model_size(config, event_shape)  # a huge layer: its weights are the error to name
    batch = config.batch_size if examples is None else min(config.batch_size, examples)
    draws = step_draws(config)
    name = ("k" if config.objective == "iwae" else "samples") if draws > 1 else "batch_size"
    value = {"k": config.k, "samples": config.samples, "batch_size": config.batch_size}[name]
    raise VaekitError(
        f"{name} = {value:,}: one training step would hold at least {need / 1e9:,.1f} GB ({batch:,} examples × "
        f"{draws:,} draws × {need // (4 * batch * draws):,} float32 values each), more than this machine's "
        f"{memory / 1e9:,.1f} GB of memory; lower {name}"
    )


def check_evaluation_size(importance_samples: int, batch_size: int) -> None:
    """Refuse an evaluation whose log-weights cannot fit in memory: it holds K of them per
    example in float64 for two terms (:func:`vaekit.evaluation.score_batch`), for at least one
    example at a time however large K is."""
    from vaekit.evaluation import examples_per_batch

    memory = _physical_memory()
    need = 2 * 8 * importance_samples * examples_per_batch(batch_size, importance_samples)
    if memory and need > memory:
        raise VaekitError(
            f"--importance-samples {importance_samples:,}: the evaluation would hold {need / 1e9:,.1f} GB of "
            f"importance weights at once, more than this machine's {memory / 1e9:,.1f} GB of memory; lower "
            f"--importance-samples"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def initialise(model: torch.nn.Module, config: Config, x) -> None:
    """The config's initialisation recipe on a freshly built model: ``init`` (torch's
    default, Glorot-uniform or N(0, SD²) weights) and ``output_bias = "data"`` (the decoder's
    output bias at the likelihood's natural parameter of the training data's mean ``x``)."""
    from vaekit import init

    if config.init == "glorot":
        init.glorot_(model)
    elif config.init_std is not None:
        init.normal_(model, config.init_std)
    if config.output_bias == "data":
        init.output_bias_(model, data_mean(x))


def data_mean(x) -> torch.Tensor:
    """The mean example of ``x`` (a tensor or an array read on demand), summed in float64."""
    from vaekit.app.data.lazy import is_lazy

    total, n = None, 0
    chunks = x.chunks() if is_lazy(x) else (x[i : i + 10_000] for i in range(0, len(x), 10_000))
    for chunk in chunks:
        part = torch.as_tensor(chunk).double().sum(0)
        total, n = (part if total is None else total + part), n + len(chunk)
    return total / n


# ---------------------------------------------------------------------- training parts
def objective_for(config: Config):
    """The training objective a config names, as a function ``(model, batch) -> (loss, terms)``,
    given the settings among ``samples``, ``kl``, ``beta``, ``kl_warmup``, ``free_bits`` and
    ``k`` that it takes (its keyword parameters say which)."""
    objective = OBJECTIVES[config.objective].load()
    settings = {"samples": config.samples, "kl": config.kl, "beta": config.beta,
                "warmup": float(config.kl_warmup), "free_bits": config.free_bits, "k": config.k}
    takes = inspect.signature(objective).parameters
    return functools.partial(objective, **{k: v for k, v in settings.items() if k in takes})


def optimizer_for(config: Config, device: torch.device):
    """A function ``params -> optimiser`` for the config's ``optimizer``, ``lr``, ``weight_decay``
    and Adam's ``adam_betas`` / ``adam_eps`` (:mod:`vaekit.optimizers`); fused kernels where
    torch has them."""
    make = OPTIMIZERS[config.optimizer].load()
    options = {"lr": config.lr, "weight_decay": config.weight_decay, "betas": tuple(config.adam_betas),
               "eps": config.adam_eps, "fused": device.type in ("cpu", "cuda")}
    return lambda params: make(params, **options)


def schedule_from_spec(spec: Spec):
    """The :mod:`vaekit.schedules` schedule a parsed ``lr_schedule`` names (None: constant)."""
    return SCHEDULES.create(spec)


def step_flops(model: torch.nn.Module, config: Config) -> float | None:
    """Rough FLOPs of one training step of an MLP or linear model: forward and backward
    (3 × 2 multiply-adds per weight and example), the decoder's and an IAF's MADEs' share once
    per draw; a VampPrior's pseudo-inputs through the inference network once per step, and a
    learned prior's density (each component at each draw). None for conv bodies, whose weights
    are reused across the image."""
    if config.architecture == "conv":
        return None
    draws = step_draws(config)
    linear = [(name, m.weight.numel()) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(n * (draws if "decoder" in name or ".made." in name else 1) for name, n in linear)
    flops = 6.0 * config.batch_size * weights
    components = int(getattr(getattr(model, "prior_module", None), "components", 0) or 0)
    if components:
        if PRIORS[config.prior].trait("encoder"):
            inference = sum(n for name, n in linear if name.startswith(("encoder", "posterior.amortise", "up.")))
            flops += 6.0 * components * inference
        latent = getattr(model, "z2_dim", None) or config.latent_dim
        flops += 6.0 * config.batch_size * draws * components * latent
    return flops
