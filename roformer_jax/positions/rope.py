"""Rotary position embedding (Su et al. 2021, "RoFormer: Enhanced Transformer
with Rotary Position Embedding", arXiv 2104.09864).

Queries and keys at position m are rotated pairwise by angles m * theta_i with
theta_i = base^(-2i/d), so q_m . k_n depends on m - n only. With
`rotary_value` the values are rotated too, as RoFormer's original release
allows. Nothing is stored in the parameter tree.
"""

import jax

from roformer_jax import rotary
from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


@register("rope")
class RotaryEncoding(PositionEncoding):
    """RoPE on queries and keys (and optionally values)."""

    def _rotate(self, x: Array, positions: Array) -> Array:
        return rotary.apply_rotary(
            x,
            positions,
            base=self.config.rotary_base,
            layout=self.config.rotary_layout,
            rotary_dim=self.config.rotary_dim,
        )

    def transform(self, q, k, v, q_positions, k_positions):
        q = self._rotate(q, q_positions)
        k = self._rotate(k, k_positions)
        if self.config.rotary_value:
            v = self._rotate(v, k_positions)
        return q, k, v, None
