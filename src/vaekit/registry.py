"""Names -> factories, one :class:`Registry` per kind of component (models, likelihoods,
learning-rate schedules, optimisers, activations, objectives, priors, posteriors).

A registry is what a configuration's validation, the command line's ``--help``, ``vaekit
presets`` and the documentation read: a new likelihood is one class in
:mod:`vaekit.likelihoods` and one :class:`Entry` line here. Entries name their factory as
``"module:attribute"`` and import it on first use, so that reading the names (``vaekit
--help``, checking a config) does not import torch.

Parameterised entries take a mini-language, ``NAME[:P1[:P2]]`` (``step:10:0.5``), parsed once
by :meth:`Registry.parse` into a :class:`Spec` of typed numbers, defaults filled in.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from vaekit.errors import VaekitError


@dataclass(frozen=True)
class Param:
    """A parameter of a parameterised entry: its name (shown upper-case in usage), default,
    and whether it must be a whole number."""

    name: str
    default: float
    integer: bool = False


@dataclass(frozen=True)
class Entry:
    """One named component: ``factory`` is a callable or ``"module:attribute"``; ``help`` the
    short text --help shows beside the name; ``params`` the numbers its mini-language takes;
    ``traits`` facts the app's checks read (``conditional``, ``closed_form_kl``, ...)."""

    name: str
    factory: Callable[..., Any] | str | None
    help: str = ""
    params: tuple[Param, ...] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any] | None:
        """The factory itself (imported on first use)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        factory = self.load()
        return None if factory is None else factory(*args, **kwargs)

    @property
    def usage(self) -> str:
        """``step[:EPOCHS[:GAMMA]]``."""
        return self.name + "".join(f"[:{p.name.upper()}" for p in self.params) + "]" * len(self.params)

    def trait(self, name: str, default: Any = None) -> Any:
        return self.traits.get(name, default)


class Spec(NamedTuple):
    """A parsed ``NAME[:P1[:P2]]``: the entry's name and its numbers, defaults filled in."""

    name: str
    args: tuple[float, ...] = ()


class Registry(Mapping[str, Entry]):
    """The components of one ``kind``, by name, in the order they are listed."""

    def __init__(self, kind: str, entries: list[Entry] | tuple[Entry, ...] = ()):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> Entry:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} '{entry.name}' is registered twice")
        self._entries[entry.name] = entry
        return entry

    def register(self, name: str, help: str = "", params: tuple[Param, ...] = (),
                 **traits: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A decorator adding the decorated factory under ``name``."""

        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, factory, help, params, traits))
            return factory

        return add

    # Mapping
    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise VaekitError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: object, default: Entry | None = None) -> Entry | None:
        return self._entries.get(name, default) if isinstance(name, str) else default

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def unknown(self, name: Any, setting: str | None = None) -> str:
        """The message for a name that is not here (with the closest one)."""
        hint = difflib.get_close_matches(str(name), self.names, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{setting or self.kind} must be one of {', '.join(self.names)}; got '{name}'{extra}"

    def describe(self) -> str:
        """``a | b (its help) | c[:P]``: the choices as --help and the docs list them."""
        return " | ".join(e.usage + (f" ({e.help})" if e.help else "") for e in self._entries.values())

    def parse(self, text: str, setting: str | None = None) -> Spec:
        """``NAME[:P1[:P2]]`` -> :class:`Spec`, every number checked (finite; whole where the
        parameter counts something)."""
        setting = setting or self.kind
        name, *parts = str(text).split(":")
        entry = self.get(name)
        if entry is None:
            raise VaekitError(self.unknown(name, setting))
        if len(parts) > len(entry.params):
            raise VaekitError(f"{setting} '{text}' has too many parts: {name} takes {entry.usage}")
        args = []
        for param, part in zip(entry.params, parts + [None] * (len(entry.params) - len(parts)), strict=True):
            if part is None:
                args.append(param.default)
                continue
            try:
                value = float(part)
            except ValueError:
                raise VaekitError(f"{setting} '{text}': the parts after '{name}:' must be numbers") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise VaekitError(f"{setting} '{text}': {param.name} must be a finite number")
            if param.integer and value != int(value):
                raise VaekitError(f"{setting} '{text}': {param.name} must be a whole number, got {value:g}")
            args.append(value)
        return Spec(name, tuple(args))

    def create(self, spec: Spec, *args: Any, **kwargs: Any) -> Any:
        """The component a parsed :class:`Spec` names, its numbers passed in order (whole
        numbers as ``int``) after ``args``; ``None`` for an entry without a factory."""
        entry = self[spec.name]
        numbers = [int(v) if p.integer else v for p, v in zip(entry.params, spec.args, strict=True)]
        return entry(*args, *numbers, **kwargs)


# ---------------------------------------------------------------------- the library's components
LIKELIHOODS = Registry("likelihood", [
    Entry("bernoulli", "vaekit.likelihoods:BernoulliLikelihood", "binary data, logits", traits={"unit_range": True}),
    Entry("gaussian", "vaekit.likelihoods:GaussianLikelihood", "σ_G fixed or learned, see sigma",
          traits={"sigma": True}),
    Entry("continuous-bernoulli", "vaekit.likelihoods:ContinuousBernoulliLikelihood", "values in [0, 1]",
          traits={"unit_range": True}),
    Entry("logistic", "vaekit.likelihoods:DiscretizedLogisticLikelihood", "discretised, see levels",
          traits={"unit_range": True, "levels": True}),
    Entry("laplace", "vaekit.likelihoods:LaplaceLikelihood", "scale as sigma", traits={"sigma": True}),
])

# The factories take the number of epochs where the schedule counts epochs; "constant" is no schedule.
SCHEDULES = Registry("lr_schedule", [
    Entry("constant", None),
    Entry("step", "vaekit.schedules:StepDecay", "every EPOCHS epochs times GAMMA; 10:0.5",
          (Param("epochs", 10.0), Param("gamma", 0.5))),
    Entry("exponential", "vaekit.schedules:Exponential", "per epoch, 0.95", (Param("gamma", 0.95),)),
    Entry("cosine", "vaekit.schedules:Cosine", "to FINAL x lr over the planned steps, 0", (Param("final", 0.0),)),
    Entry("geometric", "vaekit.schedules:Geometric",
          "constant for HOLD of the steps, then geometric to FINAL x lr; 0.25:0.05",
          (Param("hold", 0.25), Param("final", 0.05))),
    Entry("plateau", "vaekit.schedules:Plateau", "5:0.5", (Param("patience", 5.0, integer=True), Param("factor", 0.5))),
    Entry("burda", "vaekit.schedules:Burda", "3^i passes at lr x 10^(-i/7), i = 0..7"),
])

# Each factory takes (params, lr=, weight_decay=, betas=, eps=, fused=) and uses what it knows.
OPTIMIZERS = Registry("optimizer", [
    Entry("adam", "vaekit.optimizers:adam"),
    Entry("adamw", "vaekit.optimizers:adamw", "decoupled weight decay"),
    Entry("adagrad", "vaekit.optimizers:adagrad"),
    Entry("sgd", "vaekit.optimizers:sgd"),
])

ACTIVATIONS = Registry("activation", [
    Entry(name, f"torch.nn:{cls}") for name, cls in (
        ("relu", "ReLU"), ("tanh", "Tanh"), ("elu", "ELU"), ("softplus", "Softplus"), ("gelu", "GELU"),
        ("silu", "SiLU"), ("leaky_relu", "LeakyReLU"), ("sigmoid", "Sigmoid"))
])

# Traits: deterministic (no posterior to sample: an encoder output of latent_dim, no KL),
# conditional (takes the labels), closed_form_kl (False: kl must be 'mc'), two_layer (z1, z2).
MODELS = Registry("model", [
    Entry("vae", "vaekit.model:VAE", traits={"closed_form_kl": True}),
    Entry("ae", "vaekit.model:AE", "the deterministic autoencoder", traits={"deterministic": True,
                                                                           "closed_form_kl": True}),
    Entry("cvae", "vaekit.model:VAE", "conditional on the label", traits={"conditional": True,
                                                                         "closed_form_kl": True}),
    Entry("hvae", "vaekit.model:TwoLayerVAE", "two stochastic layers", traits={"two_layer": True,
                                                                              "closed_form_kl": False}),
])

OBJECTIVES = Registry("objective", [
    Entry("elbo", "vaekit.objectives:elbo_objective"),
    Entry("iwae", "vaekit.objectives:iwae_objective", "the importance-weighted bound with k samples"),
])

KL_ESTIMATORS = Registry("kl", [
    Entry("auto", None, "closed form where one exists, else Monte Carlo"),
    Entry("analytic", None, "closed form only"),
    Entry("mc", None, "Monte Carlo"),
])

# p(z): each factory takes (latent_dim, ...) (vaekit.priors). Traits: closed_form_kl (a
# Gaussian posterior's KL against it has a closed form), factorised (a product over latent
# coordinates: what free bits floors per coordinate), encoder (it mixes the model's own
# posteriors at learned pseudo-inputs, so it needs an unconditional encoder whose posterior
# has a density everywhere).
PRIORS = Registry("prior", [
    Entry("standard", "vaekit.priors:StandardNormal", "N(0, I)",
          traits={"closed_form_kl": True, "factorised": True}),
    Entry("mog", "vaekit.priors:MixtureOfGaussians", "a learned mixture of prior_components Gaussians"),
    Entry("vamp", "vaekit.priors:VampPrior",
          "Tomczak & Welling's VampPrior: the posteriors at prior_components learned pseudo-inputs",
          traits={"encoder": True}),
])

# q(z|x): each factory takes (latent_dim, features=, options) (vaekit.posteriors). Traits:
# closed_form_kl (against the standard prior), factorised (diagonal: free bits applies),
# invertible (False: a flow without a closed-form inverse, scored at its own draws only),
# options (the factory's keyword options; a config's are named in vaekit.app.factories).
POSTERIORS = Registry("posterior", [
    Entry("diagonal", "vaekit.posteriors:DiagonalGaussian", "N(μ, diag σ²)",
          traits={"closed_form_kl": True, "factorised": True, "options": ()}),
    Entry("full", "vaekit.posteriors:FullCovarianceGaussian", "N(μ, LLᵀ), Cholesky factor L",
          traits={"closed_form_kl": True, "options": ()}),
    Entry("planar", "vaekit.posteriors:Planar", "flow_steps planar flows, Rezende & Mohamed 2015",
          traits={"invertible": False, "options": ("steps",)}),
    Entry("iaf", "vaekit.posteriors:IAF", "flow_steps inverse autoregressive flows with MADEs "
          "iaf_hidden wide, Kingma et al. 2016", traits={"options": ("steps", "hidden")}),
    Entry("householder", "vaekit.posteriors:Householder", "flow_steps Householder reflections, "
          "Tomczak & Welling 2016", traits={"options": ("steps",)}),
    Entry("sylvester", "vaekit.posteriors:Sylvester", "flow_steps Sylvester flows of sylvester_kind, "
          "van den Berg et al. 2018",
          traits={"invertible": False, "options": ("steps", "kind", "vectors", "reflections")}),
])
