"""ALiBi, attention with linear biases (Press et al. 2021, "Train Short, Test
Long: Attention with Linear Biases Enables Input Length Extrapolation",
arXiv 2108.12409).

Dimension alphabet: B batch, T query length, S key length, N heads.

Head h adds bias = -m_h * |i - j| for query position i and key position j,
with a fixed slope m_h and no parameters. The paper defines ALiBi for causal
models, where only keys j <= i are visible and |i - j| = i - j. Using the
magnitude makes the same bias symmetric for bidirectional models, which the
paper does not study.
"""

import jax
import jax.numpy as jnp
import numpy as np

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


def _geometric_slopes(num_heads: int) -> np.ndarray:
    """Return 2^(-8/n), 2^(-16/n), ..., 2^(-8) for n = num_heads."""
    exponents = np.arange(1, num_heads + 1, dtype=np.float64)
    return 2.0 ** (-8.0 * exponents / num_heads)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Return the float64 `[N]` ALiBi slopes.

    For N a power of two, the slopes are the geometric sequence that starts
    at 2^(-8/N) with ratio 2^(-8/N). For other N, the paper takes the slopes
    for P, the largest power of two below N, then appends every other slope
    of the sequence for 2P (its 1st, 3rd, 5th, ...) until there are N.

    Raises:
      ValueError: `num_heads` is not positive.
    """
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got num_heads={num_heads}.")
    power = 1 << (num_heads.bit_length() - 1)
    slopes = _geometric_slopes(power)
    if power == num_heads:
        return slopes
    interleaved = _geometric_slopes(2 * power)[0::2]
    return np.concatenate([slopes, interleaved[: num_heads - power]])


@register("alibi")
class ALiBi(PositionEncoding):
    """Fixed linear distance penalties, one slope per head (no parameters)."""

    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the float32 `[B, N, T, S]` bias."""
        slopes = jnp.asarray(alibi_slopes(self.config.num_heads), jnp.float32)
        # The distance is an int32 difference, exact in float32 below 2^24, so
        # shifting every position by the same amount leaves the bias unchanged
        # bit for bit.
        distance = jnp.abs(k_positions[:, None, :] - q_positions[:, :, None])
        distance = distance.astype(jnp.float32)[:, None, :, :]  # [B, 1, T, S]
        return q, k, v, -slopes[None, :, None, None] * distance
