"""The one configuration dataclass: defaults < TOML/JSON file < command-line flags.

Every run directory stores the resolved config as ``config.json``; :func:`Config.from_dict`
is the only way a config is read back, and it checks names, types and ranges, so a file
someone sent you cannot smuggle anything in.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from vaekit import registry
from vaekit.errors import VaekitError
from vaekit.policy import MAY_CHANGE_ON_RESUME as LIBRARY_MAY_CHANGE  # noqa: F401 (the app's list includes it)
from vaekit.registry import Entry, Registry, Spec

# The component names a config may give: the library's registries, and the app's own bodies.
MODELS, LIKELIHOODS, ACTIVATIONS = registry.MODELS, registry.LIKELIHOODS, registry.ACTIVATIONS
PRIORS, POSTERIORS = registry.PRIORS, registry.POSTERIORS
KL_ESTIMATORS, OBJECTIVES, OPTIMIZERS = registry.KL_ESTIMATORS, registry.OBJECTIVES, registry.OPTIMIZERS
LR_SCHEDULES = registry.SCHEDULES
ARCHITECTURES = Registry("architecture", [
    # hidden_features: the encoder can end at its last hidden layer for a posterior head to read
    Entry("mlp", "vaekit.app.factories:mlp_bodies", "hidden layers, the decoder mirrors them",
          traits={"hidden_features": True}),
    Entry("linear", "vaekit.app.factories:linear_bodies", "probabilistic PCA's model"),
    Entry("conv", "vaekit.app.factories:conv_bodies", "stride-2 convolutions, see channels"),
])
# Grey-level renderings of binary drawings: binarize = "auto" draws them dynamically for the
# Bernoulli likelihood (its ELBO is a bound only on binary data), the literature's protocol.
BINARY_IMAGE_DATA = ("digits", "mnist", "fashion-mnist", "kmnist")
IMAGE_MODES = ("auto", "grey", "rgb")
VALIDATION_SPLITS = ("fraction", "test")
PRECISIONS = ("fp32", "bf16", "auto")
COMPILE = ("off", "on", "auto")
OUTPUT_BIASES = ("zero", "data")
SYLVESTER_KINDS = ("orthogonal", "householder", "triangular")  # vaekit.posteriors.SYLVESTER_KINDS, torch-free
SHORT_RUN_STEPS = 300  # --steps below this gets a warning: numbers that far from convergence mislead
TRACKERS = ("tensorboard", "mlflow")
# What a stored config.json without these keys (written before they existed) was trained with.
# A config that omits them otherwise (a TOML file, Python) gets the current defaults.
BEFORE_THE_KEY = {"init": "default", "output_bias": "zero", "likelihood": "bernoulli", "kl": "analytic",
                  "prior": "standard", "posterior": "diagonal"}


ScheduleSpec = Spec  # a parsed lr_schedule: its name and numbers (defaults filled in)


class Binarization(NamedTuple):
    """A binarisation protocol, parsed: ``kind`` none | dynamic | static | threshold, and the
    threshold's ``level``."""

    kind: str
    level: float | None = None

    @property
    def dynamic(self) -> bool:
        return self.kind == "dynamic"


def setting(default: Any, help: str, *, choices: Registry | tuple[str, ...] | None = None,
            parse: Callable[[str], Any] | None = None, minimum: str | int | None = None,
            max_items: int | None = None, on_resume: bool = False) -> Any:
    """A setting of :class:`Config`, declared once: its default and ``help`` (what ``vaekit
    train --help`` and docs/settings.md show), the ``choices`` it takes (a registry's names,
    listed in the help), the ``parse`` function of its mini-language (run once, by
    :meth:`Config.validate`; :meth:`Config.typed` returns the result), a ``minimum``
    (``"positive"``, ``"non-negative"`` or a number; for a list, of each item), a cap on a list's
    length, and whether a resumed run may change it (``on_resume``)."""
    meta = {"help": help, "choices": choices, "parse": parse, "minimum": minimum, "max_items": max_items,
            "on_resume": on_resume}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Caps on list settings. A list is a layer per item, and nothing a VAE needs comes near them,
# while a config that runs away (20,000 hidden layers took 100 s and 1.8 GB just to build) fails
# only after the model is built: refused up front instead. 64 fully connected layers is already
# far deeper than any published VAE (Burda et al.: 2 per stochastic layer; ladder VAEs: ~10).
# A conv body halves the image side per layer, so 16 layers would need images 65,536 pixels wide.
MAX_LAYERS = 64
MAX_CONV_LAYERS = 16
# Integers go to torch and numpy as int64: a larger one can only be a mistake.
MAX_INT = 2**63 - 1
# The longest preset is 1 KB; a megabyte of settings is a mistake or an attack, and reading it
# whole (as the TOML and JSON parsers do) is what that size bounds.
MAX_CONFIG_BYTES = 1_000_000


@dataclass
class DataSettings:
    """What the model is trained on."""

    data: str = setting("digits", "Dataset: digits (built in), mnist | fashion-mnist | kmnist (downloaded once, "
                        "verified), a .npy/.npz/.csv/.tsv/.parquet file, or a folder of images.")
    data_dir: str | None = setting(None, "Folder already holding a published dataset's official files (instead "
                                   "of the download cache).", on_resume=True)
    # auto: dynamic for the bernoulli likelihood on BINARY_IMAGE_DATA, else none
    binarize: str = setting("auto", "auto | none | dynamic | static | threshold:LEVEL (auto: dynamic for the "
                            "bernoulli likelihood on digits and the MNIST family, whose ELBO is a bound only on "
                            "binary data; none otherwise).", parse=lambda text: text == "auto" or parse_binarize(text))
    validation_fraction: float = setting(0.1, "Share of training data held out for validation.")
    mirror: str | None = setting(None, "Base URL(s), comma-separated, to download published datasets from as "
                                 "URL/<file name> (default: $VAEKIT_MIRROR, else the official hosts, then mirrors).",
                                 parse=lambda text: parse_mirrors(text), on_resume=True)
    image_size: int = setting(0, "Image folders: resize every image to N x N (0: keep sizes, which must then all "
                              "match).", minimum="non-negative")
    image_mode: str = setting("auto", "Image folders: auto | grey | rgb (auto: grey when every image is).",
                              choices=IMAGE_MODES)
    label_column: str | None = setting(None, "CSV/Parquet: the column holding labels (not used as a feature).")
    standardize: bool = setting(False, "Standardise every feature to mean 0, sd 1 over the training split; "
                                "recorded in the run and applied by evaluate/encode/sample.")
    validation_split: str = setting("fraction", "fraction (a seeded share of the training data) | test (the "
                                    "dataset's official test split).", choices=VALIDATION_SPLITS)


@dataclass
class ModelSettings:
    """The networks and the latent space."""

    model: str = setting("vae", "", choices=registry.MODELS)
    architecture: str = setting("mlp", "", choices=ARCHITECTURES)
    hidden: list[int] = setting([400], "Hidden layer sizes, e.g. 400 or 400,200 (decoder mirrors).",
                                minimum="positive", max_items=MAX_LAYERS)
    activation: str = setting("relu", "", choices=registry.ACTIVATIONS)
    latent_dim: int = setting(2, "Latent dimensions d.", minimum="positive")
    channels: list[int] = setting([32, 64], "Conv architecture: channels per stride-2 layer, e.g. 32,64 (the image "
                                  "side must be divisible by 2^layers).", minimum="positive",
                                  max_items=MAX_CONV_LAYERS)
    latent_dim2: int = setting(0, "Model hvae: size of the top latent layer z2 (0: half of --latent-dim).",
                               minimum="non-negative")
    hidden2: list[int] = setting([100, 100], "Model hvae: hidden sizes between z1 and z2, e.g. 100,100.",
                                 minimum="positive", max_items=MAX_LAYERS)
    classes: int = setting(0, "Model cvae: number of classes (0: from the training labels).", minimum="non-negative")
    init: str = setting("default", "default (torch's) | glorot (Glorot-uniform weights, zero biases) | normal:SD.",
                        parse=lambda text: parse_init(text))
    # zero: as built | data: the decoder's output bias at the natural parameter of the data mean (not the
    # default: on digits it made the two-layer relu model's posterior collapse, docs/results.md)
    output_bias: str = setting("zero", "zero (default: as built) | data (the decoder's output bias at the "
                               "likelihood's natural parameter of the training mean, e.g. the logit of the mean "
                               "pixel: what lets a tanh decoder reach MNIST's background without saturating).",
                               choices=OUTPUT_BIASES)
    # the latent parts (vaekit.priors, vaekit.posteriors); for hvae the prior is over z2, the posterior over z1
    prior: str = setting("standard", "Prior p(z) (model hvae: p(z2)):", choices=registry.PRIORS)
    prior_components: int = setting(500, "Prior mog | vamp: mixture components K (vamp: pseudo-inputs; Tomczak & "
                                    "Welling use 500 on MNIST).", minimum="positive")
    posterior: str = setting("diagonal", "Posterior q(z|x) (model hvae: q(z1|x)); any other than diagonal reads "
                             "the mlp encoder's last hidden layer through its own linear map:",
                             choices=registry.POSTERIORS)
    flow_steps: int = setting(4, "Posterior planar | iaf | householder | sylvester: flow steps K.", minimum="positive")
    iaf_hidden: int = setting(320, "Posterior iaf: hidden units of each step's MADE, also the width of the context "
                              "h (Kingma et al. 2016: 320 or 1920).", minimum="positive")
    sylvester_kind: str = setting("orthogonal", "Posterior sylvester: orthogonal | householder | triangular (how Q "
                                  "is made, van den Berg et al. 2018).", choices=SYLVESTER_KINDS)
    sylvester_vectors: int = setting(8, "Posterior sylvester orthogonal: orthogonal vectors M per step (at most "
                                     "latent_dim; van den Berg et al. use 32 for 64 latents).", minimum="positive")
    sylvester_reflections: int = setting(8, "Posterior sylvester householder: Householder reflections per step "
                                         "(van den Berg et al.: 8).", minimum="positive")


@dataclass
class LikelihoodSettings:
    """p(x|z)."""

    # auto: decided from the training data (vaekit.app.data.choice) and recorded in config.json
    likelihood: str = setting("auto", "auto (bernoulli for data in [0, 1], gaussian otherwise) | "
                              + " | ".join(registry.LIKELIHOODS) + ".",
                              choices=("auto", *registry.LIKELIHOODS))
    sigma: str = setting("shared", "Gaussian σ_G (Laplace scale): fixed:VALUE | shared | per-dim.",
                         parse=lambda text: parse_sigma(text))
    sigma_min: float = setting(1e-3, "Floor on a learned σ_G.", minimum="positive")
    levels: int = setting(256, "Logistic likelihood: grey levels of the data (256 for 8-bit images, 17 for digits).",
                          minimum=2)


@dataclass
class ObjectiveSettings:
    """What training maximises."""

    objective: str = setting("elbo", "Training objective:", choices=registry.OBJECTIVES)
    samples: int = setting(1, "Monte-Carlo draws M of z per example in each training step's ELBO estimate "
                                "(not the importance samples K of 'vaekit evaluate').", minimum="positive")
    # auto (since the learned priors and flows): the closed form where torch has one, the same numbers as
    # analytic there; stored configs without the key were trained with analytic (BEFORE_THE_KEY)
    kl: str = setting("auto", "KL estimator:", choices=registry.KL_ESTIMATORS)
    beta: float = setting(1.0, "Weight on the KL term while training (reported ELBO always uses 1).",
                          minimum="non-negative")
    k: int = setting(50, "Objective iwae: importance samples k per example in each training step's bound.",
                     minimum="positive")
    kl_warmup: int = setting(0, "Epochs of linear KL warm-up from 0 to beta (0: none).", minimum="non-negative")
    free_bits: float = setting(0.0, "Free bits: KL floor per latent dimension in nats (0: off).",
                               minimum="non-negative")


@dataclass
class BudgetSettings:
    """How long to train."""

    epochs: int = setting(30, "Passes over the training data.", minimum="non-negative", on_resume=True)
    steps: int = setting(0, "Budget in optimisation steps instead of --epochs (0: off; the last epoch is cut short); "
                         "replaces a preset's or config file's --time-budget.",
                         minimum="non-negative", on_resume=True)
    # "60m": the budget in training time instead of epochs (vaekit.schedules)
    time_budget: str | None = setting(None, "Budget in training time instead of --epochs, e.g. 60m, 1.5h, 90s: the "
                                      "number of steps is planned from the measured time per step (and re-planned if "
                                      "the pace changes); schedules follow the plan. Replaces a preset's or config "
                                      "file's --steps.",
                                      parse=lambda text: _parse_duration(text), on_resume=True)
    patience: int = setting(0, "Stop when the validation ELBO has not improved for N epochs, keeping the best "
                            "epoch's weights (0: off).", minimum="non-negative", on_resume=True)


@dataclass
class OptimisationSettings:
    """The optimiser, its schedule and the minibatches."""

    batch_size: int = setting(128, "Examples per minibatch.", minimum="positive")
    optimizer: str = setting("adam", "", choices=registry.OPTIMIZERS)
    lr: float = setting(1e-3, "Learning rate (the initial one, under a schedule; a resumed run may set a new one, "
                        "applied from its next step and recorded).", minimum="positive", on_resume=True)
    lr_schedule: str = setting("constant", "", choices=registry.SCHEDULES, parse=lambda text: parse_lr_schedule(text))
    adam_betas: list[float] = setting([0.9, 0.999], "Adam/AdamW beta1,beta2.")
    adam_eps: float = setting(1e-8, "Adam/AdamW epsilon (Burda et al. use 1e-4).", minimum="positive")
    weight_decay: float = setting(0.0, "Weight decay (L2 for adam, adagrad and sgd; decoupled for adamw).",
                                  minimum="non-negative")
    grad_clip: float = setting(0.0, "Clip the gradient norm to this (0: off).", minimum="non-negative")
    seed: int = setting(0, "Random seed (initialisation, data order, splits).")


@dataclass
class HardwareSettings:
    """Where it runs."""

    threads: int = setting(0, "CPU threads for torch (0: auto, every core other processes leave free, re-checked "
                           "while training).", minimum="non-negative", on_resume=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).", on_resume=True)
    precision: str = setting("fp32", "fp32 | bf16 (bf16 autocast while training; validation and evaluation in fp32) "
                             "| auto (bf16 on a CPU with AMX or AVX512-BF16, else fp32; run.json says which).",
                             choices=PRECISIONS, on_resume=True)
    compile: str = setting("off", "off | on | auto: run the training objective through torch.compile (the same maths, "
                           "elementwise work fused; about 15-30 s of compiling first; eager again if compiling "
                           "fails). auto: on with bf16 on a CPU with AMX or AVX512-BF16 and a C++ compiler, where it "
                           "was measured to pay (docs/performance.md), else off.", choices=COMPILE, on_resume=True)


@dataclass
class CheckpointSettings:
    """Checkpoints and numerical faults (vaekit.checkpoint, docs/reliability.md)."""

    checkpoint_every: int = setting(1, "Write a checkpoint every N epochs (0: off).", minimum="non-negative",
                                    on_resume=True)
    checkpoint_minutes: float = setting(10.0, "Also write one every T minutes, between steps (0: off).",
                                        minimum="non-negative", on_resume=True)
    save_best: bool = setting(True, "Keep the best validation epoch's weights in best.safetensors.", on_resume=True)
    max_bad_steps: int = setting(20, "Stop after this many steps in a row with a non-finite loss or gradient.",
                                 minimum="positive", on_resume=True)


@dataclass
class RecordSettings:
    """What is logged and recorded."""

    log: str = setting("", "Experiment trackers, comma-separated: tensorboard (into RUN/tensorboard) | mlflow (a "
                       "file store in RUN/mlruns unless $MLFLOW_TRACKING_URI).",
                       parse=lambda text: _parse_trackers(text), on_resume=True)
    preset: str | None = setting(None, "Start from a published protocol's settings (vaekit presets lists them); "
                                 "--config and flags override it.")


# The sections, in the order config.json, --help and docs/settings.md list them; as TOML tables
# ([optimisation] lr = 1e-3) they are an alternative to the flat keys.
SECTIONS: dict[str, type] = {
    "data": DataSettings, "model": ModelSettings, "likelihood": LikelihoodSettings, "objective": ObjectiveSettings,
    "budget": BudgetSettings, "optimisation": OptimisationSettings, "hardware": HardwareSettings,
    "checkpoints": CheckpointSettings, "record": RecordSettings,
}


# Config is every section's fields, flat: one attribute, TOML key and flag per setting. (A dataclass
# collects its bases' fields from the last base to the first, hence the reversed order.)
@dataclass
class Config(RecordSettings, CheckpointSettings, HardwareSettings, OptimisationSettings, BudgetSettings,
             ObjectiveSettings, LikelihoodSettings, ModelSettings, DataSettings):
    """Everything that defines a run. Field names are the TOML keys and, with ``-`` for
    ``_``, the command-line flags; the sections (:data:`SECTIONS`) group them."""

    # ------------------------------------------------------------------ typed values
    # The string mini-languages of the TOML/JSON record, each parsed once, by its setting's parser.
    def typed(self, name: str) -> Any:
        """Setting ``name`` parsed by its mini-language's parser (cached while the value stays)."""
        value = getattr(self, name)
        cache = self.__dict__.setdefault("_typed", {})
        if name not in cache or cache[name][0] != value:
            parse = _FIELDS[name].metadata["parse"]
            cache[name] = (value, None if value is None else parse(value))
        return cache[name][1]

    @property
    def binarization(self) -> Binarization:
        protocol = self.binarize_protocol
        cache = self.__dict__.setdefault("_typed", {})
        if cache.get("binarization", (None,))[0] != protocol:
            cache["binarization"] = (protocol, Binarization(*parse_binarize(protocol)))
        return cache["binarization"][1]

    @property
    def binarize_protocol(self) -> str:
        """``binarize`` with ``auto`` decided: ``dynamic`` for the Bernoulli likelihood on
        the digits and the MNIST family, ``none`` otherwise."""
        if self.binarize != "auto":
            return self.binarize
        # likelihood auto is Bernoulli on these data, which lie in [0, 1]
        return "dynamic" if self.likelihood in ("bernoulli", "auto") and self.data in BINARY_IMAGE_DATA else "none"

    def resolved(self) -> Config:
        """A copy with ``auto`` settings decided (what a run records in config.json)."""
        return dataclasses.replace(self, binarize=self.binarize_protocol).validate()

    @property
    def trackers(self) -> tuple[str, ...]:
        """The experiment trackers ``log`` names, checked."""
        return self.typed("log")

    @property
    def schedule(self) -> Spec:
        return self.typed("lr_schedule")

    @property
    def time_budget_seconds(self) -> float | None:
        return self.typed("time_budget")

    @property
    def init_std(self) -> float | None:
        """The standard deviation of ``init = "normal:SD"`` (None for the other choices)."""
        return self.typed("init")

    @property
    def sigma_value(self) -> float | str:
        """σ_G as the likelihood takes it: a number (fixed), ``shared`` or ``per-dim``."""
        mode, value = self.typed("sigma")
        return value if mode == "fixed" else mode

    def section(self, name: str) -> Any:
        """The settings of one section (a key of :data:`SECTIONS`) as its own dataclass."""
        cls = SECTIONS[name]
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    # ------------------------------------------------------------------ validation
    def validate(self) -> Config:
        """Raise :class:`VaekitError` naming the first bad value; return self when fine.
        Each setting's declaration is checked first (type, choices, minimum, list length,
        mini-language), then the combinations."""
        for f in fields(self):
            _check_setting(f, getattr(self, f.name))
        self.__dict__.pop("_typed", None)  # parse afresh: a field may have been set since
        for f in fields(self):
            if f.metadata.get("parse") is not None:
                self.typed(f.name)
        _ = self.binarization
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise VaekitError(f"device must be auto, cpu, cuda, cuda:N or mps; got '{self.device}'")
        if not self.data:
            raise VaekitError("data must name a dataset or a file, got an empty string")
        if not self.hidden and self.architecture == "mlp":
            raise VaekitError("hidden must list at least one layer size for the mlp architecture")
        self._validate_recipe()
        if not 0 <= self.seed < 2**32:
            # numpy's legacy generator, seeded from it too, takes 32-bit seeds only
            raise VaekitError(f"seed must be an integer in [0, 2^32), got {self.seed}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise VaekitError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        self._validate_data_options()
        self._validate_variants()
        return self

    def _validate_recipe(self) -> None:
        """Optimiser, schedule, budgets, early stopping and initialisation."""
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise VaekitError(f"adam_betas must be two numbers in [0, 1), like 0.9,0.999; got {self.adam_betas}")
        if self.steps and self.time_budget is not None:
            raise VaekitError("steps and time_budget are both budgets for the whole run: give one of them")
        if self.patience and self.validation_fraction == 0 and self.validation_split != "test":
            raise VaekitError("patience stops on the validation ELBO: it needs validation data "
                              "(validation_fraction > 0 or validation_split = 'test')")

    def _validate_data_options(self) -> None:
        if self.label_column == "":
            raise VaekitError("label_column must name a column, got an empty string")
        if self.standardize and self.binarization.kind != "none":
            raise VaekitError(
                "standardize is for continuous data and cannot be combined with "
                f"binarize = '{self.binarize}'; use one or the other"
            )

    def _validate_variants(self) -> None:
        """The settings of the variants (conv, two stochastic layers, CVAE, IWAE, warm-up,
        free bits, discrete likelihoods) and the combinations that make no sense."""
        if self.architecture == "conv" and not self.channels:
            raise VaekitError("channels must list at least one layer for the conv architecture")
        kind = MODELS[self.model]
        if not kind.trait("closed_form_kl") and self.kl == "analytic":
            raise VaekitError(
                f"the two-layer model (model '{self.model}') has no closed-form KL: its prior "
                "p(z1|z2)p(z2) is not Gaussian; use kl 'auto' or 'mc' (--kl mc)"
            )
        if kind.trait("deterministic") and (self.objective == "iwae" or self.free_bits or self.kl_warmup):
            raise VaekitError(
                "the autoencoder has no KL term or posterior to sample: "
                "objective 'iwae', free_bits and kl_warmup apply to the VAE models"
            )
        if self.objective == "iwae" and self.free_bits:
            raise VaekitError("free_bits applies to the elbo objective, not to objective 'iwae'")
        self._validate_latent_parts()

    def _validate_latent_parts(self) -> None:
        """The prior and posterior: the combinations that make no sense, each refused in one line."""
        kind, prior, posterior = MODELS[self.model], PRIORS[self.prior], POSTERIORS[self.posterior]
        if kind.trait("deterministic") and (self.prior != "standard" or self.posterior != "diagonal"):
            raise VaekitError("the autoencoder (model 'ae') has no prior or posterior: prior and posterior "
                              "apply to the VAE models")
        if prior.trait("encoder") and kind.trait("conditional"):
            raise VaekitError(f"prior '{self.prior}' mixes the encoder's posteriors at pseudo-inputs, which carry "
                              f"no class label: model '{self.model}' needs prior standard or mog")
        if prior.trait("encoder") and posterior.trait("invertible") is False:
            raise VaekitError(f"prior '{self.prior}' needs its components' density q(z|u_k) at any z, and posterior "
                              f"'{self.posterior}' is a flow without an inverse: use diagonal, full, iaf or "
                              "householder with it")
        if self.free_bits and not (prior.trait("factorised") and posterior.trait("factorised")):
            raise VaekitError(f"free_bits floors the KL per latent coordinate, which is defined only for the diagonal "
                              f"posterior and the standard prior; got posterior '{self.posterior}', prior "
                              f"'{self.prior}'")
        if self.kl == "analytic" and not (prior.trait("closed_form_kl") and posterior.trait("closed_form_kl")):
            raise VaekitError(f"kl 'analytic': there is no closed-form KL between posterior '{self.posterior}' and "
                              f"prior '{self.prior}'; use kl 'auto' or 'mc'")
        if self.posterior == "sylvester" and self.sylvester_kind == "orthogonal" \
                and self.sylvester_vectors > self.latent_dim:
            raise VaekitError(f"sylvester_vectors must be at most latent_dim ({self.latent_dim}) for orthogonal "
                              f"Sylvester flows, got {self.sylvester_vectors}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        """Build a config from plain values, checking every key and type."""
        if not isinstance(values, dict):
            raise VaekitError(f"{source}: expected a table of settings, got {type(values).__name__}")
        return cls().override(values, source=source)

    @classmethod
    def from_stored(cls, values: dict[str, Any], source: str = "config") -> Config:
        """A run's stored config (``config.json``, a checkpoint's): keys it lacks take the
        value the version that wrote it used (:data:`BEFORE_THE_KEY`), not today's default."""
        if isinstance(values, dict):
            values = {**BEFORE_THE_KEY, **values}
        return cls.from_dict(values, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        return cls.from_dict(read_config_file(path), source=str(path))

    def override(self, values: dict[str, Any], source: str = "command line") -> Config:
        """A copy with ``values`` applied (``None`` values are skipped), type-checked. Keys are
        flat (``lr``) or grouped in a section's table (``{"optimisation": {"lr": ...}}``)."""
        updates: dict[str, Any] = {}
        for key, value in flatten(values, source).items():
            if value is None:
                continue
            name = key.replace("-", "_")
            if name not in _FIELDS:
                hint = difflib.get_close_matches(name, list(_FIELDS), n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                raise VaekitError(f"{source}: unknown setting '{key}'{extra}")
            updates[name] = _coerce(name, value, _FIELDS[name].type, source)
        # steps and time_budget exclude each other: one named here replaces the other from below
        # (a preset's 60m gives way to --steps 300 for a trial; both here is still refused)
        if updates.get("steps") and "time_budget" not in updates:
            updates["time_budget"] = None
        if updates.get("time_budget") is not None and "steps" not in updates:
            updates["steps"] = 0
        return dataclasses.replace(self, **updates).validate()

    def diff(self, other: Config) -> list[str]:
        """Human-readable differences, one line per setting."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]

    def save(self, path: str | Path) -> None:
        from vaekit.rundir import write_json

        write_json(path, self.to_dict())


_FIELDS = {f.name: f for f in fields(Config)}
# Settings that say how long to train, how often to save or where to run, not what is
# computed (declared with on_resume=True): a resumed run may change them. Any other difference
# is refused (the result would not be the run's).
MAY_CHANGE_ON_RESUME = tuple(f.name for f in fields(Config) if f.metadata["on_resume"])
# fit's own resume policy (vaekit.policy.MAY_CHANGE_ON_RESUME, imported here as LIBRARY_MAY_CHANGE) is
# part of it: every setting fit lets change is declared on_resume (tests/test_config.py checks it)


def section_of(name: str) -> str:
    """The section (a key of :data:`SECTIONS`) that declares setting ``name``."""
    return next(key for key, cls in SECTIONS.items() if name in {f.name for f in fields(cls)})


def help_text(name: str) -> str:
    """A setting's help as --help and the docs show it: its text, then its registry's choices."""
    meta = _FIELDS[name].metadata
    text, choices = meta["help"], meta["choices"]
    if isinstance(choices, Registry) and (not text or text.endswith(":")):
        text = f"{text} {choices.describe()}.".strip()
    return text


# ---------------------------------------------------------------------- parsing helpers
def flatten(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Settings with the sections' tables (``[optimisation]`` in TOML) opened into flat keys.
    ``data`` and ``model`` are both a section and a setting: a table is the section."""
    if not isinstance(values, dict):
        raise VaekitError(f"{source}: expected a table of settings, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in SECTIONS:
            known = {f.name for f in fields(SECTIONS[key])}
            for name, item in value.items():
                if str(name).replace("-", "_") not in known:
                    raise VaekitError(f"{source}: section [{key}] has no setting '{name}'"
                                      + (f" (it is in [{section_of(name)}])" if name in _FIELDS else ""))
                flat[name] = item
        else:
            flat[key] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"config file not found: {path}")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise VaekitError(f"config file {path} is {path.stat().st_size:,} bytes; a config is at most "
                              f"{MAX_CONFIG_BYTES:,}")
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise VaekitError(f"config file {path} is not valid {kind}: {err}") from None
    except RecursionError:  # both parsers recurse once per level of nesting
        raise VaekitError(f"config file {path} nests tables or lists too deeply to be a config") from None
    except ValueError as err:  # an integer past Python's 4,300-digit conversion limit
        raise VaekitError(f"config file {path} holds a number too long to be a setting: "
                          f"{str(err).split(':')[0]}") from None
    except OSError as err:
        raise VaekitError(f"cannot read config file {path}: {err.strerror or err}") from None
    if not isinstance(values, dict):
        raise VaekitError(f"config file {path}: expected a table of settings, got {type(values).__name__}")
    return values


def parse_hidden(text: str, name: str = "hidden") -> list[int]:
    """``"400"`` or ``"400,200"`` (also ``"400 200"``) -> ``[400, 200]``; ``""`` -> ``[]``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise VaekitError(f"{name} must be layer sizes like '400' or '400,200', got '{text}'") from None


def parse_lr_schedule(text: str) -> Spec:
    """``constant`` | ``step[:EPOCHS[:GAMMA]]`` | ``exponential[:GAMMA]`` | ``cosine[:FINAL]`` |
    ``geometric[:HOLD[:FINAL]]`` | ``plateau[:PATIENCE[:FACTOR]]`` | ``burda``
    (:data:`vaekit.registry.SCHEDULES`), checked by building the schedule (its own ranges)."""
    spec = LR_SCHEDULES.parse(text, "lr_schedule")
    try:
        LR_SCHEDULES.create(spec)
    except VaekitError as err:
        raise VaekitError(f"lr_schedule '{text}': {err}") from None
    return spec


def parse_init(text: str) -> float | None:
    """``default`` | ``glorot`` | ``normal:SD`` -> SD for ``normal``, else None."""
    if text in ("default", "glorot"):
        return None
    if text.startswith("normal:"):
        try:
            std = float(text.split(":", 1)[1])
        except ValueError:
            std = float("nan")
        if not std > 0 or std == float("inf"):
            raise VaekitError(f"init 'normal:SD' needs a positive standard deviation, got '{text}'")
        return std
    raise VaekitError(f"init must be default, glorot or normal:SD; got '{text}'")


def parse_sigma(text: str) -> tuple[str, float | None]:
    """``fixed:0.1`` -> ("fixed", 0.1); ``shared`` / ``per-dim`` -> (mode, None)."""
    if text in ("shared", "per-dim"):
        return text, None
    if text.startswith("fixed:"):
        try:
            value = float(text.split(":", 1)[1])
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise VaekitError(f"sigma 'fixed:VALUE' needs a positive number, got '{text}'")
        return "fixed", value
    raise VaekitError(f"sigma must be 'fixed:VALUE', 'shared' or 'per-dim', got '{text}'")


def parse_binarize(text: str) -> tuple[str, float | None]:
    """``none`` | ``dynamic`` | ``static`` | ``threshold:0.5`` (``auto`` is decided by
    :attr:`Config.binarize_protocol` before it gets here)."""
    if text in ("none", "dynamic", "static"):
        return text, None
    if text == "auto":
        raise VaekitError("binarize 'auto' depends on the data and likelihood: decide it with Config.binarize_protocol")
    if text.startswith("threshold"):
        _, _, value = text.partition(":")
        try:
            level = float(value) if value else 0.5
        except ValueError:
            level = float("nan")
        if not 0.0 <= level <= 1.0:
            raise VaekitError(f"binarize 'threshold:LEVEL' needs LEVEL in [0, 1], got '{text}'")
        return "threshold", level
    raise VaekitError(
        f"binarize must be one of auto, none, dynamic, static, threshold:LEVEL; got '{text}'"
    )


def parse_mirrors(text: str) -> list[str]:
    """``"URL"`` or ``"URL1,URL2"`` -> base URLs (http, https or file), tried in order."""
    urls = [u for u in text.replace(",", " ").split() if u]
    for url in urls or [text]:
        if not url.startswith(("http://", "https://", "file:")):
            raise VaekitError(f"mirror must be http://, https:// or file: URLs, got '{url}'")
    return urls


def _choice(name: str, value: str, allowed: tuple[str, ...] | Registry) -> None:
    if isinstance(allowed, Registry):
        if value not in allowed:
            raise VaekitError(allowed.unknown(value, name))
        return
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise VaekitError(f"{name} must be one of {', '.join(allowed)}; got '{value}'{extra}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        need = "non-negative" if allow_zero else "positive"
        raise VaekitError(f"{name} must be {need} and finite, got {value}")


def _check_setting(f: dataclasses.Field, value: Any) -> None:
    """One setting against its declaration: type, choices, minimum, list length."""
    name, meta = f.name, f.metadata
    _check_type(name, value, str(f.type))
    if meta["choices"] is not None and meta["parse"] is None:
        _choice(name, value, meta["choices"])
    if isinstance(value, list) and meta["max_items"] is not None and len(value) > meta["max_items"]:
        raise VaekitError(f"{name} lists {len(value):,} layers; at most {meta['max_items']} are allowed")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise VaekitError(f"{name} must fit in 64 bits, got a number of {len(str(abs(item)))} digits")
        minimum = meta["minimum"]
        if minimum in ("positive", "non-negative"):
            _positive(name, item, allow_zero=minimum == "non-negative")
        elif minimum is not None and item < minimum:
            raise VaekitError(f"{name} must be at least {minimum}, got {item}")


def _parse_trackers(text: str) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> the tracker names, checked."""
    names = tuple(n for n in text.replace(",", " ").split() if n)
    for name in names:
        _choice("log", name, TRACKERS)
    return names


def _parse_duration(text: str) -> float:
    from vaekit.schedules import parse_duration

    return parse_duration(text)


def _check_type(name: str, value: Any, kind: str) -> None:
    # Python callers build Config directly: a wrong type gets a message, not a TypeError later.
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    ok = {
        "int": is_int(value),
        "float": is_int(value) or isinstance(value, float),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "str | None": value is None or isinstance(value, str),
        "list[int]": isinstance(value, list) and all(is_int(v) for v in value),
        "list[float]": isinstance(value, list) and all(is_int(v) or isinstance(v, float) for v in value),
    }.get(kind, True)
    if not ok:
        raise VaekitError(f"setting '{name}' expects {kind}, got {value!r}")


def _coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "list[float]":
            if isinstance(value, str):
                value = [float(p) for p in value.replace(",", " ").split()]
            if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                return [float(v) for v in value]
            raise TypeError
        if kind.startswith("list"):
            if isinstance(value, str):
                return parse_hidden(value, name)
            if isinstance(value, int) and not isinstance(value, bool):
                return [value]
            if isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                return list(value)
            raise TypeError
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            return float(value)
        if kind.startswith("str"):
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise VaekitError(f"{source}: setting '{name}' expects {kind}, got {value!r}")


def settings_reference() -> str:
    """docs/settings.md: every setting by section, with its flag, default and help, and the
    registries' choices (tests/test_config.py checks that the file is this text)."""
    lines = ["# Settings", "",
             "Generated from the declarations in `src/vaekit/app/config.py` (`settings_reference()`); do not edit.",
             "Each setting is a TOML/JSON key, a `vaekit train` flag (`--name-with-dashes`) and an attribute of",
             "`vaekit.Config`. In a TOML file the keys may be flat (`lr = 1e-3`) or grouped by section",
             "(`[optimisation]` then `lr = 1e-3`).", ""]
    for key, cls in SECTIONS.items():
        lines += [f"## [{key}]: {cls.__doc__.strip()}", "",
                  "| setting | flag | default | meaning |", "|---|---|---|---|"]
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            flag = "--" + f.name.replace("_", "-")
            flag = f"{flag} / --no-{flag[2:]}" if str(f.type) == "bool" else flag
            text = help_text(f.name).replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{flag}` | `{json.dumps(default)}` | {text} |")
        lines.append("")
    return "\n".join(lines)
