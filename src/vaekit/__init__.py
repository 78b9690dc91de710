"""vaekit: Variational Autoencoders on PyTorch, exact and honest about their numbers.

Attributes are imported lazily so that ``vaekit --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
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
