"""Boolean attention masks, True where a query may attend to a key.

Dimension alphabet: B batch, T query length, S key length. Masks here are
`[B, 1, T, S]` (or `[1, 1, T, S]`) so they broadcast over heads.
`SegmentMask` holds the same information as `[B, T]` and `[B, S]` segment ids
and a causal flag, for attention paths that never build the T x S mask.
"""

import flax
import jax
import jax.numpy as jnp

Array = jax.Array


def segment_mask(q_segment_ids: Array, k_segment_ids: Array) -> Array:
    """Allow attention within the same segment; segment id 0 is padding.

    Packed documents get distinct ids, so this mask is both the padding mask
    and the packing mask.
    """
    same = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    real_key = (k_segment_ids != 0)[:, None, :]
    return (same & real_key)[:, None, :, :]


def causal_mask(q_length: int, k_length: int) -> Array:
    """Allow query t to see keys s <= t + (S - T), by index: `[1, 1, T, S]`.

    Order comes from the index in the sequence, not from the position ids,
    so packed documents whose positions restart stay causal. When S > T the
    queries are taken to be the last T of the S keys.
    """
    offset = k_length - q_length
    q_index = jnp.arange(q_length)[:, None] + offset
    k_index = jnp.arange(k_length)[None, :]
    return (k_index <= q_index)[None, None, :, :]


def combine(*masks: Array | None) -> Array | None:
    """AND the given masks together, ignoring None."""
    present = [mask for mask in masks if mask is not None]
    if not present:
        return None
    result = present[0]
    for mask in present[1:]:
        result = jnp.logical_and(result, mask)
    return result


@flax.struct.dataclass
class SegmentMask:
    """The self-attention mask in O(T + S) memory: segment ids and a causal flag.

    `dense()` is `segment_mask` AND (if `causal`) `causal_mask`, the mask that
    `roformer_jax.models.layers.attention_mask` builds. Attention paths that
    work on blocks (chunked, Pallas flash) read the ids and build each block's
    mask themselves.
    """

    q_segment_ids: Array  # [B, T] int; 0 marks padding.
    k_segment_ids: Array  # [B, S] int; 0 marks padding.
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    def dense(self) -> Array:
        """Build the bool `[B, 1, T, S]` mask, True where attention is allowed."""
        causal = None
        if self.causal:
            causal = causal_mask(
                self.q_segment_ids.shape[1], self.k_segment_ids.shape[1]
            )
        return combine(segment_mask(self.q_segment_ids, self.k_segment_ids), causal)
