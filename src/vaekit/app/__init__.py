"""The app: a thin layer over the library that knows about configs (``Config``, TOML and
the command line), named datasets and data files (:mod:`vaekit.app.data`), run directories
started from a config (:mod:`vaekit.app.runs`), the CPU thread policy and the CLI.

The library (everything in ``vaekit`` outside this package) never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

# The app's Python API (``from vaekit.app import Config, train``; also reachable as ``vaekit.train``
# and so on, which the package forwards here), imported lazily: ``vaekit --help`` stays torch-free.
_EXPORTS = {
    "Config": "vaekit.app.config",
    "build_model": "vaekit.app.factories",
    "train": "vaekit.app.runs",
    "resume": "vaekit.app.runs",
    "load": "vaekit.app.runs",
    "save": "vaekit.app.runs",
    "load_data": "vaekit.app.data",
    "Dataset": "vaekit.app.data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vaekit.app' has no attribute '{name}'")
