"""Relative position representations of Shaw, Uszkoreit and Vaswani 2018,
"Self-Attention with Relative Position Representations" (arXiv:1803.02155).

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, R = 2k + 1 relative buckets.

A query at position p_i and a key at position p_j fall in bucket
r_ij = clip(p_j - p_i, -k, k) + k, with k = `relative_clip_distance`. The
relative distance is the key position minus the query position, so keys
before the query have negative distances. It is computed from the position
values, so packed documents and left padding need no special case. Two
learned tables w^K and w^V of R vectors of size H, shared by all heads as in
the paper, give a^K_ij = w^K[r_ij] and a^V_ij = w^V[r_ij]:

  e_ij = q_i . (k_j + a^K_ij) / sqrt(H)
  z_i = sum_j alpha_ij (v_j + a^V_ij),   alpha_ij = softmax_j(e_ij)

`transform` returns the logit bias q_i . a^K_ij / sqrt(H), which the model
adds to its q_i . k_j / sqrt(H). `value_offsets` returns
sum_j alpha_ij a^V_ij, which the model adds to sum_j alpha_ij v_j. Every
attention layer has its own tables.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


def relative_buckets(q_positions: Array, k_positions: Array, clip_distance: int):
    """Return the int32 `[B, T, S]` buckets clip(p_j - p_i, -k, k) + k."""
    distance = k_positions[:, None, :] - q_positions[:, :, None]
    return jnp.clip(distance, -clip_distance, clip_distance) + clip_distance


@register("shaw")
class ShawRelative(PositionEncoding):
    """Learned relative key and value embeddings, clipped at distance k."""

    needs_attention_weights = True

    def setup(self):
        config = self.config
        if config.relative_clip_distance < 0:
            raise ValueError(
                f"relative_clip_distance={config.relative_clip_distance} is "
                "invalid for shaw. Set it to 0 or more."
            )
        shape = (self._num_buckets(), config.head_dim)
        init = nn.with_logical_partitioning(
            nn.initializers.normal(config.initializer_range), (None, "kv")
        )
        self.key_table = self.param("key_table", init, shape)  # w^K, [R, H]
        self.value_table = self.param("value_table", init, shape)  # w^V, [R, H]

    def _num_buckets(self) -> int:
        return 2 * self.config.relative_clip_distance + 1

    def _buckets(self, q_positions: Array, k_positions: Array) -> Array:
        return relative_buckets(
            q_positions, k_positions, self.config.relative_clip_distance
        )

    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the `[B, N, T, S]` float32 key bias."""
        # q_i . w^K[r] for every bucket r, then the bucket of each key j.
        per_bucket = jnp.einsum(
            "btnh,rh->bntr", q.astype(jnp.float32), self.key_table
        )  # [B, N, T, R]
        buckets = self._buckets(q_positions, k_positions)[:, None]  # [B, 1, T, S]
        bias = jnp.take_along_axis(per_bucket, buckets, axis=-1)  # [B, N, T, S]
        return q, k, v, bias * self.config.head_dim**-0.5

    def value_offsets(self, weights, q_positions, k_positions):
        """Return sum_j alpha_ij w^V[r_ij]: `[B, T, N, H]` float32."""
        buckets = self._buckets(q_positions, k_positions)
        one_hot = jax.nn.one_hot(buckets, self._num_buckets(), dtype=jnp.float32)
        # The total weight each query gives to each bucket: [B, N, T, R].
        per_bucket = jnp.einsum("bnts,btsr->bntr", weights.astype(jnp.float32), one_hot)
        return jnp.einsum("bntr,rh->btnh", per_bucket, self.value_table)
