"""``vaekit.train(config, out)`` and ``vaekit.evaluate(model, x)`` are API functions, and
``vaekit.train`` / ``vaekit.evaluate`` are also modules of the package. Python binds a
package attribute to its submodule as soon as the submodule is imported, so the name can
only be one object: the module, made callable so that calling it calls the function.
``import vaekit.train as m; m.run_epoch`` and ``from vaekit.train import train`` work too.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


def make_module_callable(module_name: str, function: Callable) -> None:
    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    sys.modules[module_name].__class__ = CallableModule
