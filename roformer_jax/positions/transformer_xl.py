"""Relative attention of Transformer-XL: Dai et al. 2019, "Transformer-XL:
Attentive Language Models Beyond a Fixed-Length Context" (arXiv:1901.02860).

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, D model dim, D_R = D the size of the relative encoding.

With projected query q_i and key k_j of one head, the score of query i
(position p_i) and key j (position p_j) is

  (a) q_i . k_j  +  (b) q_i . W_R R(p_i - p_j)
  + (c) u . k_j  +  (d) v . W_R R(p_i - p_j)

all divided by sqrt(H). The relative distance is the query position minus
the key position, so keys before the query have positive distances. It is
computed from the position values, never from indices. R(t) are the fixed
sinusoids of Vaswani et al. 2017 at distance t (negative t works too),
W_R: D_R -> N * H is learned, and u, v are learned `[N, H]` vectors (the
content bias and the position bias). The model computes term (a), so
`transform` returns (b) + (c) + (d), divided by sqrt(H), as the bias. Every
attention layer has its own W_R, u and v.

(b) + (d) is computed without a `[T, S, D_R]` tensor of encodings. Write
w = W_R^T (q_i + v), and for each sinusoid frequency f let x = f * p_i and
y = f * p_j. Then w_sin sin(x - y) + w_cos cos(x - y) equals
(w_cos sin x - w_sin cos x) sin y + (w_sin sin x + w_cos cos x) cos y, a dot
product of a query-side vector with the key's own sinusoids.

Precision: positions are first moved so that the smallest key position in
each row is 0. That leaves every p_i - p_j unchanged, so shifting all
positions by a constant gives bitwise identical scores. The float32 angles
f * p then have an error of at most about 2.4 * 2**-24 * span radians, where
span is the largest position minus the smallest in the row (the bound derived
in `roformer_jax.rotary`). That is about 1.4e-3 rad at span 1e4.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.absolute import sinusoid_table
from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


@register("transformer_xl")
class TransformerXLRelative(PositionEncoding):
    """Sinusoidal relative encodings projected per head, with u and v biases."""

    def setup(self):
        config = self.config
        if config.hidden_size % 2:
            raise ValueError(
                f"hidden_size={config.hidden_size} is invalid for transformer_xl, "
                "whose sinusoids come in sine and cosine pairs. Use an even size."
            )
        n, h = config.num_heads, config.head_dim

        def init(axes):
            return nn.with_logical_partitioning(
                nn.initializers.normal(config.initializer_range), axes
            )

        # W_R, [D_R, N, H].
        self.relative_kernel = self.param(
            "relative_kernel",
            init(("embed", "heads", "kv")),
            (config.hidden_size, n, h),
        )
        self.content_bias = self.param("content_bias", init(("heads", "kv")), (n, h))
        self.position_bias = self.param("position_bias", init(("heads", "kv")), (n, h))

    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the `[B, N, T, S]` float32 bias."""
        config = self.config
        query = q.astype(jnp.float32)
        key = k.astype(jnp.float32)

        # NOTE: left-padding positions count towards the span, so padding
        # positions far from the real ones cost precision (see module docstring).
        origin = jnp.min(k_positions, axis=1, keepdims=True)  # [B, 1]
        q_sinusoids = sinusoid_table(q_positions - origin, config.hidden_size)
        k_sinusoids = sinusoid_table(k_positions - origin, config.hidden_size)
        sin_x = q_sinusoids[:, :, None, 0::2]  # [B, T, 1, D_R / 2]
        cos_x = q_sinusoids[:, :, None, 1::2]

        # w = W_R^T (q_i + v), split into its sine and cosine coefficients.
        projected = jnp.einsum(
            "btnh,dnh->btnd", query + self.position_bias, self.relative_kernel
        )  # [B, T, N, D_R]
        w_sin, w_cos = projected[..., 0::2], projected[..., 1::2]
        coefficients = jnp.stack(
            [w_cos * sin_x - w_sin * cos_x, w_sin * sin_x + w_cos * cos_x], axis=-1
        ).reshape(projected.shape)  # Interleaved like the sinusoids.
        position_terms = jnp.einsum(
            "btnd,bsd->bnts", coefficients, k_sinusoids
        )  # (b) + (d), [B, N, T, S]

        content_term = jnp.einsum("nh,bsnh->bns", self.content_bias, key)  # (c)
        bias = position_terms + content_term[:, :, None, :]
        return q, k, v, bias * config.head_dim**-0.5
