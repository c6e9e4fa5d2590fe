"""Position encodings, selected by name through `model.position_encoding`.

Importing this package registers every encoding it ships.
"""

from roformer_jax.positions import absolute, rope  # noqa: F401  (registers)
from roformer_jax.positions.base import (
    PositionEncoding,
    get,
    register,
    registered_names,
)

__all__ = ["PositionEncoding", "get", "register", "registered_names"]
