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
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from vaekit.errors import VaekitError
from vaekit.policy import MAY_CHANGE_ON_RESUME as _LIBRARY_MAY_CHANGE

MODELS = ("vae", "ae", "cvae", "hvae")
ARCHITECTURES = ("mlp", "linear", "conv")
LIKELIHOODS = ("bernoulli", "gaussian", "continuous-bernoulli", "logistic", "laplace")
ACTIVATIONS = ("relu", "tanh", "elu", "softplus", "gelu", "silu", "leaky_relu", "sigmoid")
KL_ESTIMATORS = ("analytic", "mc")
OBJECTIVES = ("elbo", "iwae")
BINARIZE_MODES = ("auto", "none", "dynamic", "static", "threshold")
# Grey-level renderings of binary drawings: binarize = "auto" draws them dynamically for the
# Bernoulli likelihood (its ELBO is a bound only on binary data), the literature's protocol.
BINARY_IMAGE_DATA = ("digits", "mnist", "fashion-mnist", "kmnist")
IMAGE_MODES = ("auto", "grey", "rgb")
VALIDATION_SPLITS = ("fraction", "test")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")
OUTPUT_BIASES = ("zero", "data")
# lr_schedule: name -> (parameter names, defaults); "step:10:0.5" sets them in order
LR_SCHEDULES = {
    "constant": ((), ()),
    "step": (("epochs", "gamma"), (10.0, 0.5)),
    "exponential": (("gamma",), (0.95,)),
    "cosine": (("final",), (0.0,)),
    "geometric": (("hold", "final"), (0.25, 0.05)),
    "plateau": (("patience", "factor"), (5.0, 0.5)),
    "burda": ((), ()),
}
SHORT_RUN_STEPS = 300  # --steps below this gets a warning: numbers that far from convergence mislead
# Settings that say how long to train, how often to save or where to run, not what is
# computed: a resumed run may change them. Any other difference is refused (the result would
# not be the run's).
# the library's resume policy, and the app's own settings that change nothing computed
MAY_CHANGE_ON_RESUME = (*_LIBRARY_MAY_CHANGE, "threads", "data_dir", "log", "mirror", "patience")
TRACKERS = ("tensorboard", "mlflow")
# What a stored config.json without these keys (written before they existed) was trained with.
# A config that omits them otherwise (a TOML file, Python) gets the current defaults.
BEFORE_THE_KEY = {"init": "default", "output_bias": "zero"}


class ScheduleSpec(NamedTuple):
    """A learning-rate schedule, parsed: ``name`` (a key of :data:`LR_SCHEDULES`) and its
    numbers in order (defaults filled in)."""

    name: str
    args: tuple[float, ...] = ()


class Binarization(NamedTuple):
    """A binarisation protocol, parsed: ``kind`` none | dynamic | static | threshold, and the
    threshold's ``level``."""

    kind: str
    level: float | None = None

    @property
    def dynamic(self) -> bool:
        return self.kind == "dynamic"


@dataclass
class Config:
    """Everything that defines a run. Field names are the TOML keys and, with ``-`` for
    ``_``, the command-line flags."""

    # data
    data: str = "digits"
    data_dir: str | None = None
    binarize: str = "auto"  # auto: dynamic for the bernoulli likelihood on BINARY_IMAGE_DATA, else none
    validation_fraction: float = 0.1
    mirror: str | None = None
    image_size: int = 0
    image_mode: str = "auto"
    label_column: str | None = None
    standardize: bool = False
    validation_split: str = "fraction"
    # model
    model: str = "vae"
    architecture: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    latent_dim: int = 2
    likelihood: str = "bernoulli"
    sigma: str = "shared"
    sigma_min: float = 1e-3
    channels: list[int] = field(default_factory=lambda: [32, 64])
    latent_dim2: int = 0
    hidden2: list[int] = field(default_factory=lambda: [100, 100])
    classes: int = 0
    levels: int = 256
    init: str = "default"  # default (torch's) | glorot | normal:SD
    # zero: as built | data: the decoder's output bias at the natural parameter of the data mean (not the
    # default: on digits it made the two-layer relu model's posterior collapse, docs/results.md)
    output_bias: str = "zero"
    # objective
    objective: str = "elbo"
    samples: int = 1
    kl: str = "analytic"
    beta: float = 1.0
    k: int = 50
    kl_warmup: int = 0
    free_bits: float = 0.0
    # optimisation
    epochs: int = 30
    steps: int = 0  # > 0: the budget in optimisation steps instead of epochs
    time_budget: str | None = None  # "60m": the budget in training time instead of epochs (vaekit.schedules)
    patience: int = 0  # > 0: stop when the validation ELBO has not improved for this many epochs; keep the best
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    threads: int = 0  # 0: auto, every free core (vaekit.app.threads)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (vaekit.devices)
    precision: str = "fp32"  # fp32 | bf16 (autocast while training)
    # checkpoints and numerical faults (see vaekit.checkpoint and docs/reliability.md)
    checkpoint_every: int = 1
    checkpoint_minutes: float = 10.0
    save_best: bool = True
    max_bad_steps: int = 20
    log: str = ""  # experiment trackers, comma-separated: tensorboard, mlflow
    preset: str | None = None  # the preset the run started from (vaekit presets), for the record

    # ------------------------------------------------------------------ typed values
    # The string mini-languages of the TOML/JSON record, parsed once per config.
    @cached_property
    def binarization(self) -> Binarization:
        return Binarization(*parse_binarize(self.binarize_protocol))

    @property
    def binarize_protocol(self) -> str:
        """``binarize`` with ``auto`` decided: ``dynamic`` for the Bernoulli likelihood on
        the digits and the MNIST family, ``none`` otherwise."""
        if self.binarize != "auto":
            return self.binarize
        return "dynamic" if self.likelihood == "bernoulli" and self.data in BINARY_IMAGE_DATA else "none"

    def resolved(self) -> Config:
        """A copy with ``auto`` settings decided (what a run records in config.json)."""
        return dataclasses.replace(self, binarize=self.binarize_protocol).validate()

    @cached_property
    def trackers(self) -> tuple[str, ...]:
        """The experiment trackers ``log`` names, checked."""
        names = tuple(n for n in self.log.replace(",", " ").split() if n)
        for name in names:
            _choice("log", name, TRACKERS)
        return names

    @cached_property
    def schedule(self) -> ScheduleSpec:
        return parse_lr_schedule(self.lr_schedule)

    @cached_property
    def time_budget_seconds(self) -> float | None:
        from vaekit.schedules import parse_duration

        return None if self.time_budget is None else parse_duration(self.time_budget)

    @cached_property
    def init_std(self) -> float | None:
        """The standard deviation of ``init = "normal:SD"`` (None for the other choices)."""
        return parse_init(self.init)

    @cached_property
    def sigma_value(self) -> float | str:
        """σ_G as the likelihood takes it: a number (fixed), ``shared`` or ``per-dim``."""
        mode, value = parse_sigma(self.sigma)
        return value if mode == "fixed" else mode

    # ------------------------------------------------------------------ validation
    def validate(self) -> Config:
        """Raise :class:`VaekitError` naming the first bad value; return self when fine."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), str(f.type))
        _choice("model", self.model, MODELS)
        _choice("architecture", self.architecture, ARCHITECTURES)
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("kl", self.kl, KL_ESTIMATORS)
        _choice("objective", self.objective, OBJECTIVES)
        parsed = ("binarization", "sigma_value", "trackers", "schedule", "time_budget_seconds", "init_std")
        for name in parsed:
            self.__dict__.pop(name, None)  # a field may have been set since: parse afresh
        _ = [getattr(self, name) for name in parsed]
        _choice("precision", self.precision, PRECISIONS)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise VaekitError(f"device must be auto, cpu, cuda, cuda:N or mps; got '{self.device}'")
        if not self.data:
            raise VaekitError("data must name a dataset or a file, got an empty string")
        if not self.hidden and self.architecture == "mlp":
            raise VaekitError("hidden must list at least one layer size for the mlp architecture")
        for h in self.hidden:
            _positive("hidden", h)
        _positive("latent_dim", self.latent_dim)
        _positive("samples", self.samples)
        _positive("epochs", self.epochs, allow_zero=True)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _positive("sigma_min", self.sigma_min)
        _positive("beta", self.beta, allow_zero=True)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("grad_clip", self.grad_clip, allow_zero=True)
        _positive("threads", self.threads, allow_zero=True)
        _positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _positive("checkpoint_minutes", self.checkpoint_minutes, allow_zero=True)
        _positive("max_bad_steps", self.max_bad_steps)
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
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("output_bias", self.output_bias, OUTPUT_BIASES)
        _positive("steps", self.steps, allow_zero=True)
        _positive("patience", self.patience, allow_zero=True)
        _positive("adam_eps", self.adam_eps)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise VaekitError(f"adam_betas must be two numbers in [0, 1), like 0.9,0.999; got {self.adam_betas}")
        if self.steps and self.time_budget is not None:
            raise VaekitError("steps and time_budget are both budgets for the whole run: give one of them")
        if self.patience and self.validation_fraction == 0 and self.validation_split != "test":
            raise VaekitError("patience stops on the validation ELBO: it needs validation data "
                              "(validation_fraction > 0 or validation_split = 'test')")

    def _validate_data_options(self) -> None:
        _choice("image_mode", self.image_mode, IMAGE_MODES)
        _choice("validation_split", self.validation_split, VALIDATION_SPLITS)
        _positive("image_size", self.image_size, allow_zero=True)
        if self.mirror is not None:
            parse_mirrors(self.mirror)
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
        for c in self.channels:
            _positive("channels", c)
        for h in self.hidden2:
            _positive("hidden2", h)
        _positive("latent_dim2", self.latent_dim2, allow_zero=True)
        _positive("classes", self.classes, allow_zero=True)
        _positive("k", self.k)
        _positive("kl_warmup", self.kl_warmup, allow_zero=True)
        _positive("free_bits", self.free_bits, allow_zero=True)
        if self.architecture == "conv" and not self.channels:
            raise VaekitError("channels must list at least one layer for the conv architecture")
        if self.levels < 2:
            raise VaekitError(f"levels must be at least 2, got {self.levels}")
        if self.model == "hvae" and self.kl == "analytic":
            raise VaekitError(
                "the two-layer model (model 'hvae') has no closed-form KL: its prior "
                "p(z1|z2)p(z2) is not Gaussian; use kl 'mc' (--kl mc)"
            )
        if self.model == "ae" and (self.objective == "iwae" or self.free_bits or self.kl_warmup):
            raise VaekitError(
                "the autoencoder has no KL term or posterior to sample: "
                "objective 'iwae', free_bits and kl_warmup apply to the VAE models"
            )
        if self.objective == "iwae" and self.free_bits:
            raise VaekitError("free_bits applies to the elbo objective, not to objective 'iwae'")

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
        """A copy with ``values`` applied (``None`` values are skipped), type-checked."""
        known = {f.name: f for f in fields(self)}
        updates: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            name = key.replace("-", "_")
            if name not in known:
                hint = difflib.get_close_matches(name, list(known), n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                raise VaekitError(f"{source}: unknown setting '{key}'{extra}")
            updates[name] = _coerce(name, value, known[name].type, source)
        return dataclasses.replace(self, **updates).validate()

    def diff(self, other: Config) -> list[str]:
        """Human-readable differences, one line per setting."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]

    def save(self, path: str | Path) -> None:
        from vaekit.rundir import write_json

        write_json(path, self.to_dict())


# ---------------------------------------------------------------------- parsing helpers
def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"config file not found: {path}")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise VaekitError(f"config file {path} is not valid {kind}: {err}") from None
    except OSError as err:
        raise VaekitError(f"cannot read config file {path}: {err.strerror or err}") from None


def parse_hidden(text: str, name: str = "hidden") -> list[int]:
    """``"400"`` or ``"400,200"`` (also ``"400 200"``) -> ``[400, 200]``; ``""`` -> ``[]``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise VaekitError(f"{name} must be layer sizes like '400' or '400,200', got '{text}'") from None


def parse_lr_schedule(text: str) -> ScheduleSpec:
    """``constant`` | ``step[:EPOCHS[:GAMMA]]`` | ``exponential[:GAMMA]`` | ``cosine[:FINAL]`` |
    ``geometric[:HOLD[:FINAL]]`` | ``plateau[:PATIENCE[:FACTOR]]`` | ``burda``."""
    name, *parts = text.split(":")
    if name not in LR_SCHEDULES:
        _choice("lr_schedule", name, tuple(LR_SCHEDULES))
    names, defaults = LR_SCHEDULES[name]
    if len(parts) > len(names):
        usage = ":".join([name, *(n.upper() for n in names)])
        raise VaekitError(f"lr_schedule '{text}' has too many parts: {name} takes {usage}")
    try:
        args = tuple(float(p) for p in parts) + defaults[len(parts):]
    except ValueError:
        raise VaekitError(f"lr_schedule '{text}': the parts after '{name}:' must be numbers") from None
    spec = ScheduleSpec(name, args)
    try:
        schedule_from_spec(spec)  # the schedule's own checks (ranges), with its own message
    except VaekitError as err:
        raise VaekitError(f"lr_schedule '{text}': {err}") from None
    return spec


def schedule_from_spec(spec: ScheduleSpec):
    """The :mod:`vaekit.schedules` schedule a parsed ``lr_schedule`` names (None: constant)."""
    from vaekit import schedules

    a = spec.args
    if spec.name == "step":
        return schedules.StepDecay(a[0], a[1])
    if spec.name == "exponential":
        return schedules.Exponential(a[0])
    if spec.name == "cosine":
        return schedules.Cosine(a[0])
    if spec.name == "geometric":
        return schedules.Geometric(a[0], a[1])
    if spec.name == "plateau":
        if a[0] != int(a[0]):
            raise VaekitError(f"plateau's patience counts epochs: a whole number, got {a[0]:g}")
        return schedules.Plateau(int(a[0]), a[1])
    if spec.name == "burda":
        return schedules.Burda()
    return None


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


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise VaekitError(f"{name} must be one of {', '.join(allowed)}; got '{value}'{extra}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        need = "non-negative" if allow_zero else "positive"
        raise VaekitError(f"{name} must be {need} and finite, got {value}")


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
