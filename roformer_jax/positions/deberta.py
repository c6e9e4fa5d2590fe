"""Disentangled attention of He, Liu, Gao and Chen 2020, "DeBERTa:
Decoding-enhanced BERT with Disentangled Attention" (arXiv:2006.03654).

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, D model dim, R = 2k relative buckets.

The relative distance of query i (position p_i) and key j (position p_j) is
the query position minus the key position, computed from the position
values, and is clipped into a bucket in [0, 2k):

  delta(i, j) = clip(p_i - p_j + k, 0, 2k - 1)

with k = `relative_max_distance`, so distances in (-k, k) each get a bucket
and longer ones share the end buckets. A learned table P `[2k, D]` is
projected per head into position queries Q^r = P W_{q,r} and position keys
K^r = P W_{k,r}. With content queries q_i and keys k_j of one head, the
score is content-to-content plus content-to-position plus position-to-content:

  A_ij = q_i . k_j + q_i . K^r[delta(i, j)] + k_j . Q^r[delta(j, i)]

and the attention weights are softmax_j(A_ij / sqrt(3H)). The model divides
q . k by sqrt(H), so `transform` divides q by sqrt(3) and returns the other
two terms divided by sqrt(3H) as the bias. Every attention layer has its own
P, W_{q,r} and W_{k,r}.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


def relative_buckets(q_positions: Array, k_positions: Array, max_distance: int):
    """Return the int32 `[B, T, S]` buckets clip(p_i - p_j + k, 0, 2k - 1)."""
    distance = q_positions[:, :, None] - k_positions[:, None, :]
    return jnp.clip(distance + max_distance, 0, 2 * max_distance - 1)


@register("deberta")
class DisentangledRelative(PositionEncoding):
    """Content-to-position and position-to-content terms, scaled by 1/sqrt(3H)."""

    def setup(self):
        config = self.config
        if config.relative_max_distance < 1:
            raise ValueError(
                f"relative_max_distance={config.relative_max_distance} is "
                "invalid for deberta. Set it to 1 or more."
            )
        n, h = config.num_heads, config.head_dim

        def init(axes):
            return nn.with_logical_partitioning(
                nn.initializers.normal(config.initializer_range), axes
            )

        num_buckets = 2 * config.relative_max_distance
        # P, [2k, D].
        self.embedding = self.param(
            "embedding", init((None, "embed")), (num_buckets, config.hidden_size)
        )
        # W_{q,r} and W_{k,r}, [D, N, H].
        kernel_axes = ("embed", "heads", "kv")
        self.query_kernel = self.param(
            "query_kernel", init(kernel_axes), (config.hidden_size, n, h)
        )
        self.key_kernel = self.param(
            "key_kernel", init(kernel_axes), (config.hidden_size, n, h)
        )

    def transform(self, q, k, v, q_positions, k_positions):
        """Return q / sqrt(3), k, v and the `[B, N, T, S]` float32 bias."""
        config = self.config
        max_distance = config.relative_max_distance
        position_queries = jnp.einsum(
            "rd,dnh->rnh", self.embedding, self.query_kernel
        )  # Q^r, [2k, N, H]
        position_keys = jnp.einsum(
            "rd,dnh->rnh", self.embedding, self.key_kernel
        )  # K^r, [2k, N, H]

        # Content-to-position: q_i . K^r[r] for every bucket r, then delta(i, j).
        per_bucket = jnp.einsum(
            "btnh,rnh->bntr", q.astype(jnp.float32), position_keys
        )  # [B, N, T, 2k]
        buckets = relative_buckets(q_positions, k_positions, max_distance)
        content_to_position = jnp.take_along_axis(
            per_bucket, buckets[:, None], axis=-1
        )  # [B, N, T, S]

        # Position-to-content: k_j . Q^r[r] for every bucket r, then delta(j, i).
        per_bucket = jnp.einsum(
            "bsnh,rnh->bnsr", k.astype(jnp.float32), position_queries
        )  # [B, N, S, 2k]
        buckets = relative_buckets(k_positions, q_positions, max_distance)
        position_to_content = jnp.take_along_axis(
            per_bucket, buckets[:, None], axis=-1
        )  # [B, N, S, T]
        position_to_content = jnp.swapaxes(position_to_content, -1, -2)

        bias = (content_to_position + position_to_content) * (
            3 * config.head_dim
        ) ** -0.5
        # The model's q.k / sqrt(H) becomes q.k / sqrt(3H).
        q = (q * 3**-0.5).astype(q.dtype)
        return q, k, v, bias
