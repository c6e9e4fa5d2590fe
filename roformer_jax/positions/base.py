"""The interface every position encoding implements, and the registry.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, D model dim.

A position encoding can act in two places, and implements whichever it needs:

- `embed(positions)` in the embedding layer returns `[B, T, D]` vectors added
  to the token embeddings (absolute encodings), or None.
- `transform(q, k, v, q_positions, k_positions)` in every attention layer
  returns the queries, keys and values to attend with and a bias
  `[B or 1, N or 1, T, S]` added to the scaled logits `q.k / sqrt(H)`, or
  None (rotary and relative encodings).
- `value_offsets(weights, q_positions, k_positions)` after the softmax returns
  `[B, T, N, H]` vectors added to the attention output, or None. An encoding
  that returns offsets sets `needs_attention_weights = True`, so attention
  materialises the weights (the einsum path) instead of calling the fused
  kernel.

Adding an encoding is one module with a subclass and one `register` call.
"""

from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax

from roformer_jax.model_config import ModelConfig

Array = jax.Array


class PositionEncoding(nn.Module):
    """Base class: adds nothing and transforms nothing (no position signal)."""

    config: ModelConfig

    # True when `value_offsets` returns offsets, which need the weights.
    needs_attention_weights: ClassVar[bool] = False

    # The largest sequence length the encoding can represent, or None when
    # any length works. Subclasses with a fixed table override `max_length`.
    def max_length(self) -> int | None:
        return None

    def embed(self, positions: Array) -> Array | None:
        del positions
        return None

    def transform(
        self,
        q: Array,
        k: Array,
        v: Array,
        q_positions: Array,
        k_positions: Array,
    ) -> tuple[Array, Array, Array, Array | None]:
        del q_positions, k_positions
        return q, k, v, None

    def value_offsets(
        self,
        weights: Array,
        q_positions: Array,
        k_positions: Array,
    ) -> Array | None:
        """Return `[B, T, N, H]` offsets added to the attention output, or None.

        `weights` are the `[B, N, T, S]` float32 attention weights after the
        softmax, the mask and any dropout. Called only on subclasses that set
        `needs_attention_weights`.
        """
        del weights, q_positions, k_positions
        return None


_REGISTRY: dict[str, type[PositionEncoding]] = {}


def register(name: str) -> Callable[[type[PositionEncoding]], type[PositionEncoding]]:
    """Register a `PositionEncoding` subclass under `name` (class decorator)."""

    def decorator(cls: type[PositionEncoding]) -> type[PositionEncoding]:
        if name in _REGISTRY:
            raise ValueError(f"Position encoding {name!r} is already registered.")
        _REGISTRY[name] = cls
        return cls

    return decorator


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[PositionEncoding]:
    """Return the class registered as `name`, or raise listing valid names."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown position encoding {name!r}; set model.position_encoding "
            f"to one of {registered_names()}."
        )
    return _REGISTRY[name]
