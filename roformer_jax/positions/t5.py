"""T5 relative position bias (Raffel et al. 2020, "Exploring the Limits of
Transfer Learning with a Unified Text-to-Text Transformer", arXiv 1910.10683).

Dimension alphabet: B batch, T query length, S key length, N heads.

The relative position of key j to query i is r = j - i, computed from the
position values, so keys before the query have r < 0. Each r maps to one of
`relative_num_buckets` buckets, and each (bucket, head) pair has one learned
scalar that is added to the attention logits.

Bucketing, with n the distance and M = max_exact:

- Bidirectional (`causal=False`): half the buckets serve keys before the query
  and half serve keys after it (offset by the half), with n = |r|.
- Causal (`causal=True`): every bucket serves keys at or before the query,
  with n = max(-r, 0), so keys after the query share bucket 0 (the causal mask
  removes them).

Within one direction of `num` buckets, M = num // 2 distances 0..M-1 get one
bucket each. Larger distances get M + floor((num - M) * log(n / M) /
log(max_distance / M)), so bucket widths grow logarithmically up to
`relative_max_distance`, and all distances beyond share the last bucket.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


def log_bucket_edges(
    max_exact: int, num_log_buckets: int, max_distance: int
) -> list[int]:
    """Return the smallest distance of each logarithmic bucket after the first.

    Edge k (k = 1 .. num_log_buckets - 1) is the smallest integer n with
    floor(num_log_buckets * log(n / max_exact) / log(max_distance / max_exact))
    >= k, that is n^K >= max_distance^k * max_exact^(K - k) with
    K = num_log_buckets. The comparison is done in Python integers, so edges
    that fall exactly on an integer distance do not depend on float rounding.
    """
    edges = []
    for k in range(1, num_log_buckets):
        target = max_distance**k * max_exact ** (num_log_buckets - k)
        log_edge = (
            k * math.log(max_distance) + (num_log_buckets - k) * math.log(max_exact)
        ) / num_log_buckets
        edge = max(1, math.floor(math.exp(log_edge)) - 1)
        # The float estimate can be off by one or two, so move it to the
        # smallest integer that satisfies the integer inequality.
        while edge**num_log_buckets < target:
            edge += 1
        while edge > 1 and (edge - 1) ** num_log_buckets >= target:
            edge -= 1
        edges.append(edge)
    return edges


def relative_position_bucket(
    relative_position: Array,
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Array:
    """Map relative positions j - i (int, any shape) to int32 T5 bucket ids.

    Returns ids in [0, num_buckets). See the module docstring for the rule.

    Raises:
      ValueError: a direction would get fewer than 2 buckets, `num_buckets` is
        odd for a bidirectional bucketing, or `max_distance` is not larger
        than the number of exact buckets.
    """
    if bidirectional and num_buckets % 2:
        raise ValueError(
            f"relative_num_buckets={num_buckets} must be even for a bidirectional "
            "model, because the buckets are split evenly between keys before and "
            "after the query."
        )
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    if per_direction < 2:
        raise ValueError(
            f"relative_num_buckets={num_buckets} gives {per_direction} bucket(s) "
            "per direction; use at least 2 per direction (4 for a bidirectional "
            "model)."
        )
    max_exact = per_direction // 2
    if max_distance <= max_exact:
        raise ValueError(
            f"relative_max_distance={max_distance} must exceed the {max_exact} "
            f"distances that get a bucket each; increase it above {max_exact}."
        )

    relative_position = relative_position.astype(jnp.int32)
    if bidirectional:
        offset = jnp.where(relative_position > 0, per_direction, 0)
        distance = jnp.abs(relative_position)
    else:
        offset = jnp.zeros_like(relative_position)
        distance = jnp.maximum(-relative_position, 0)

    edges = jnp.asarray(
        log_bucket_edges(max_exact, per_direction - max_exact, max_distance),
        dtype=jnp.int32,
    )
    # Distances at or past the last edge all land in bucket per_direction - 1.
    log_bucket = max_exact + jnp.sum(distance[..., None] >= edges, axis=-1)
    bucket = jnp.where(distance < max_exact, distance, log_bucket)
    return (offset + bucket).astype(jnp.int32)


@register("t5")
class T5RelativeBias(PositionEncoding):
    """A learned bias per (relative-position bucket, head), as in T5.

    The table `relative_attention_bias` is float32 `[relative_num_buckets, N]`,
    initialised from a normal with standard deviation `initializer_range`.
    Every attention layer learns its own table, because the model builds one
    encoding per layer; T5 instead shares one table across the layers of a
    stack.
    """

    @nn.compact
    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the float32 `[B, N, T, S]` bias."""
        config = self.config
        table = self.param(
            "relative_attention_bias",
            nn.with_logical_partitioning(
                nn.initializers.normal(config.initializer_range), (None, "heads")
            ),
            (config.relative_num_buckets, config.num_heads),
            jnp.float32,
        )
        relative = k_positions[:, None, :] - q_positions[:, :, None]  # [B, T, S]
        buckets = relative_position_bucket(
            relative,
            bidirectional=not config.causal,
            num_buckets=config.relative_num_buckets,
            max_distance=config.relative_max_distance,
        )
        bias = jnp.take(table, buckets, axis=0)  # [B, T, S, N]
        return q, k, v, jnp.transpose(bias, (0, 3, 1, 2))
