"""KERPLE, logarithmic variant (Chi et al. 2022, "KERPLE: Kernelized Relative
Positional Embedding for Length Extrapolation", arXiv 2205.09921).

Dimension alphabet: B batch, T query length, S key length, N heads.

Head h adds bias = -r1_h * log(1 + r2_h * |i - j|) for query position i and
key position j, with learned r1_h, r2_h > 0. The paper uses the causal form,
where visible keys have j <= i and |i - j| = i - j; the magnitude makes the
same bias symmetric for bidirectional models.

Positivity: the parameters `r1_unconstrained` and `r2_unconstrained` store
values u, and r = softplus(u) = log(1 + e^u). The authors' PyTorch release
(github.com/chijames/KERPLE, megatron/mpu/layers.py) instead clamps r1 and r2
in place to at least 1e-2 before each forward pass. Softplus keeps them positive with a nonzero gradient everywhere,
whereas a clamp inside a pure JAX function would zero the gradient of any
value below the floor and leave it stuck there.

Initialisation: that release draws r1 ~ U(0, 2) and r2 ~ U(0, 1) per head,
and with its 1e-2 floor applied these become r1 ~ U(0.01, 2) and
r2 ~ U(0.01, 1), which is what this module draws. The stored values are their
softplus inverses.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array

_MIN_INITIAL_VALUE = 1e-2  # The release's floor on r1 and r2.


def inverse_softplus(x: Array) -> Array:
    """Return u with softplus(u) = x, for x > 0: u = x + log(1 - e^-x)."""
    return x + jnp.log(-jnp.expm1(-x))


def _uniform_after_softplus(maximum: float):
    """Initialise u so that softplus(u) ~ U(_MIN_INITIAL_VALUE, maximum)."""

    def init(key, shape, dtype=jnp.float32):
        value = jax.random.uniform(
            key, shape, jnp.float32, minval=_MIN_INITIAL_VALUE, maxval=maximum
        )
        return inverse_softplus(value).astype(dtype)

    return init


@register("kerple_log")
class KerpleLog(PositionEncoding):
    """Learned logarithmic distance penalties, two positive scalars per head."""

    def _positive_parameter(self, name: str, maximum: float) -> Array:
        unconstrained = self.param(
            name,
            nn.with_logical_partitioning(_uniform_after_softplus(maximum), ("heads",)),
            (self.config.num_heads,),
            jnp.float32,
        )
        return jax.nn.softplus(unconstrained)

    @nn.compact
    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the float32 `[B, N, T, S]` bias."""
        r1 = self._positive_parameter("r1_unconstrained", maximum=2.0)
        r2 = self._positive_parameter("r2_unconstrained", maximum=1.0)
        distance = jnp.abs(k_positions[:, None, :] - q_positions[:, :, None])
        distance = distance.astype(jnp.float32)[:, None, :, :]  # [B, 1, T, S]
        r1 = r1[None, :, None, None]
        r2 = r2[None, :, None, None]
        return q, k, v, -r1 * jnp.log1p(r2 * distance)
