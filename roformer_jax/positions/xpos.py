"""xPos: RoPE times an exponential decay (Sun et al. 2022, "A
Length-Extrapolatable Transformer", arXiv:2212.10554).

Over the d rotated features, pair i has the decay rate
``zeta_i = (2i/d + gamma) / (1 + gamma)`` with gamma = 0.4, which the paper
writes ``(i / (d/2) + gamma) / (1 + gamma)``. After the RoPE rotation, pair i
of a query at position m is multiplied by ``zeta_i ** (m / scale_base)`` and
pair i of a key at position n by ``zeta_i ** (-n / scale_base)``, with
scale_base = `model.xpos_scale_base`. Pair i of ``q_m . k_n`` then carries
``zeta_i ** ((m - n) / scale_base)``, so the product still depends on m - n
only, and it decays as the query moves past the key because every zeta_i < 1.

xPos is meant for causal models, where m >= n. With bidirectional attention a
key after its query (n > m) is amplified by ``zeta_i ** (-(n - m) / scale_base)``,
which grows with the distance.

Offset: the smallest rate, zeta_0 = 2/7, makes ``zeta_0 ** (m / 512)`` fall
below the smallest normal float32 (about e**-87) past m of about 35,700. So both
queries and keys use their positions minus an offset c, one per batch row:
the midpoint ``(min + max) // 2`` of the row's key positions. The offset
cancels in ``q_m . k_n``, and subtracting it is exact in integers. The scales
stay within float32's normal range while a row's key positions span less than
``2 * 87 / ln(7/2) * scale_base``, about 139 * scale_base (71,000 tokens at
scale_base 512).

NOTE: queries and keys must be scaled with the same offset. A decoding cache
that stores scaled keys would have to keep the offset of its first call.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from roformer_jax import rotary
from roformer_jax.positions.base import PositionEncoding, register
from roformer_jax.positions.rope import (
    resolve_rotary_dim,
    rotate,
    validate_rope_options,
)

Array = jax.Array

XPOS_GAMMA = 0.4  # The paper's gamma, which sets the smallest rate gamma / (1 + gamma).


def xpos_decay_rates(rotary_dim: int, gamma: float = XPOS_GAMMA) -> Array:
    """Compute ``zeta_i = (2i/d + gamma) / (1 + gamma)`` for each rotated pair.

    Returns:
      ``[rotary_dim // 2] float32`` rates, from ``gamma / (1 + gamma)`` up to
      just below 1.
    """
    fractions = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
    return (fractions + gamma) / (1.0 + gamma)


def xpos_scales(
    relative_positions: ArrayLike, rotary_dim: int, scale_base: float
) -> Array:
    """Compute ``zeta_i ** (x / scale_base)`` for each position x and pair i.

    Pass query positions minus the offset for the query scales, and the offset
    minus key positions for the key scales.

    Args:
      relative_positions: integer positions relative to the offset, any shape.
      rotary_dim: d, the rotated width.
      scale_base: the decay length scale, positive.

    Returns:
      ``[*relative_positions.shape, d // 2] float32`` scales.
    """
    exponents = jnp.asarray(relative_positions).astype(jnp.float32) / scale_base
    log_rates = jnp.log(xpos_decay_rates(rotary_dim))
    return jnp.exp(exponents[..., None] * log_rates)


def xpos_offset(k_positions: ArrayLike) -> Array:
    """Return the ``[B, 1]`` offset of each row: the midpoint of its key positions."""
    k_positions = jnp.asarray(k_positions)
    lowest = jnp.min(k_positions, axis=-1, keepdims=True)
    highest = jnp.max(k_positions, axis=-1, keepdims=True)
    # Halving each term first keeps the sum inside int32 for any int32 positions.
    return lowest // 2 + highest // 2 + (lowest % 2 + highest % 2) // 2


def _rotate_and_scale(x: Array, angles: Array, scales: Array, layout: str) -> Array:
    """Rotate x by angles, multiply its rotated pairs by scales, keep x's dtype."""
    rotary_dim = 2 * scales.shape[-1]
    rotated = rotary.apply_rotary_angles(x.astype(jnp.float32), angles, layout=layout)
    if layout == "interleaved":
        feature_scales = jnp.repeat(scales, 2, axis=-1)  # pair i -> 2i, 2i + 1
    else:
        feature_scales = jnp.concatenate([scales, scales], axis=-1)  # i, i + d/2
    # [B, T, d] -> [B, T, 1, d], shared by all heads.
    scaled = rotated[..., :rotary_dim] * feature_scales[:, :, None, :]
    rotated = jnp.concatenate([scaled, rotated[..., rotary_dim:]], axis=-1)
    return rotated.astype(x.dtype)


@register("xpos")
class XPosEncoding(PositionEncoding):
    """xPos on queries and keys; with `rotary_value`, values rotate without decay.

    Frequencies are RoPE's ``rotary_base ** (-2i/d)``, and `rope_scaling`
    does not apply. Nothing is stored as a parameter.
    """

    def transform(self, q, k, v, q_positions, k_positions):
        config = self.config
        validate_rope_options(config)
        rotary_dim = resolve_rotary_dim(config)
        layout = config.rotary_layout
        scale_base = config.xpos_scale_base

        frequencies = rotary.rotary_frequencies(rotary_dim, config.rotary_base)
        q_angles = rotary.angles_from_frequencies(q_positions, frequencies)
        k_angles = rotary.angles_from_frequencies(k_positions, frequencies)

        offset = xpos_offset(k_positions)
        q_scales = xpos_scales(q_positions - offset, rotary_dim, scale_base)
        k_scales = xpos_scales(offset - k_positions, rotary_dim, scale_base)

        q = _rotate_and_scale(q, q_angles, q_scales, layout)
        k = _rotate_and_scale(k, k_angles, k_scales, layout)
        if config.rotary_value:
            v = rotate(v, k_angles, layout)
        return q, k, v, None
