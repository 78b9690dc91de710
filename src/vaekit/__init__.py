"""vaekit: Variational Autoencoders on PyTorch, exact and honest about their numbers.

Attributes are imported lazily so that ``vaekit --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "vaekit.config",
    "VaekitError": "vaekit.errors",
    "VAE": "vaekit.model",
    "AE": "vaekit.model",
    "build_model": "vaekit.model",
    "elbo": "vaekit.objectives",
    "elbo_terms": "vaekit.objectives",
    "kl_divergence": "vaekit.objectives",
    "train": "vaekit.train",
    "resume": "vaekit.train",
    "load": "vaekit.runs",
    "save": "vaekit.runs",
    "load_data": "vaekit.data",
    "Dataset": "vaekit.data",
    "evaluate": "vaekit.evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vaekit' has no attribute '{name}'")


class _Package(types.ModuleType):
    """``vaekit.train`` and ``vaekit.evaluate`` are both functions of the API and modules of
    the package. Importing a submodule normally rebinds the package attribute to the module,
    which would turn ``vaekit.train(config, out)`` into "module is not callable" depending on
    import order; this keeps the function (the module stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"vaekit.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
