"""vaekit: Variational Autoencoders on PyTorch, exact and honest about their numbers.

Two layers (docs/architecture.md). The library: models whose ``encode``/``decode`` return
``torch.distributions`` (:class:`VAE`, :class:`AE`), objectives and estimators
(:mod:`vaekit.objectives`, :func:`evaluate`), and the training loop :func:`fit`, for your
own networks, data and device. The app on top (:mod:`vaekit.app`, whose names such as
``Config``, ``train``, ``load`` and ``load_data`` are forwarded as ``vaekit.train`` and so on): configs,
named datasets, runs from a config, the CLI.

Attributes are imported lazily so that ``vaekit --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    # the library
    "VAE": "vaekit.model",
    "AE": "vaekit.model",
    "TwoLayerVAE": "vaekit.model",
    "elbo": "vaekit.objectives",
    "elbo_terms": "vaekit.objectives",
    "kl_divergence": "vaekit.objectives",
    "Batch": "vaekit.objectives",
    "fit": "vaekit.training",
    "Budget": "vaekit.arguments",
    "Checkpointing": "vaekit.arguments",
    "Guards": "vaekit.arguments",
    "FigureLabels": "vaekit.arguments",
    "History": "vaekit.callbacks",
    "Callback": "vaekit.callbacks",
    "EarlyStopping": "vaekit.callbacks",
    "ProgressBar": "vaekit.callbacks",
    "evaluate": "vaekit.evaluation",
    "check_model": "vaekit.protocol",
    "RunDirectory": "vaekit.rundir",
    "VaekitError": "vaekit.errors",
}
_MODULES = ("objectives", "likelihoods", "nets", "model", "evaluation", "training", "sampling",
            "plots", "rundir", "checkpoint", "devices", "sources", "errors", "init", "schedules", "app",
            "priors", "posteriors", "estimators", "protocol",
            "callbacks", "strategies", "noise", "policy", "start", "arguments")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES or importlib.util.find_spec(f"vaekit.{name}") is not None:
        return importlib.import_module(f"vaekit.{name}")  # `from vaekit import registry` asks here first
    # the app's names (vaekit.train, vaekit.Config, ...) are the app's to list (vaekit.app.__all__); the
    # library names none of them and imports the app only when one is asked for
    app = importlib.import_module("vaekit.app")
    if name in app.__all__:
        return getattr(app, name)
    raise AttributeError(f"module 'vaekit' has no attribute '{name}'")
