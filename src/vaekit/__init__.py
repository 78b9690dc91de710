"""vaekit: Variational Autoencoders on PyTorch, exact and honest about their numbers.

Attributes are imported lazily so that ``vaekit --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# OpenMP's wait policy is left to the user: vaekit copes with a busy machine by using fewer
# threads (vaekit.threads), which measured faster than passive waiting in every case.


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
        module = importlib.import_module(_EXPORTS[name])
        # vaekit.train and vaekit.evaluate are modules made callable (see _callable.py):
        # importing the submodule binds that name to the module whatever we return here.
        return module if _EXPORTS[name] == f"vaekit.{name}" else getattr(module, name)
    raise AttributeError(f"module 'vaekit' has no attribute '{name}'")
