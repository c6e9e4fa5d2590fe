"""Position encodings, selected by name through `model.position_encoding`.

Importing this package imports every module in it, and each module registers
its encodings with `@register("name")`, so adding an encoding is one new
module here.
"""

import importlib
import pkgutil

from roformer_jax.positions.base import (
    PositionEncoding,
    get,
    register,
    registered_names,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PositionEncoding", "get", "register", "registered_names"]
