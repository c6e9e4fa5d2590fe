"""Memory-efficient softmax attention: online softmax over blocks of keys.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim. Inputs are `[B, T, N, H]` queries and `[B, S, N, H]` keys and values,
with `[B, T]` and `[B, S]` segment ids in place of a `[B, 1, T, S]` mask.

The forward pass walks query chunks in a `lax.scan` and, for each, key
chunks in a `lax.fori_loop`. It keeps the running maximum, the running sum of
exponentials and the weighted sum of values: the online softmax of Milakov
and Gimelshein 2018, "Online normalizer calculation for softmax", which
FlashAttention (Dao et al. 2022) uses. A custom VJP stores only the output
and the per-row log-sum-exp, and the backward pass recomputes each block's
scores, as in Algorithm 2 of FlashAttention-2 (Dao 2023). So neither pass
holds more than one `[B, N, chunk, chunk]` block of scores, and memory grows
as O(T * H + chunk ** 2) instead of O(T * S).

The mask of each block is rebuilt from the segment ids (equal ids attend and
id 0 is padding) and, if causal, from the indices: query t may attend to keys
s <= t + (S - T). These are the rules of `roformer_jax.attention.masks`.
With a causal mask, key chunks wholly after a query chunk are skipped in both
passes. Logits, softmax statistics and accumulators are float32 whatever the
input dtype, and the two matmuls of each block take inputs in that dtype with
float32 accumulation.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_MASKED_LOGIT = -1e30  # Finite, so fully masked rows stay NaN-free.


def chunked_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    q_segment_ids: Array,
    k_segment_ids: Array,
    causal: bool,
    chunk_size: int = 512,
) -> Array:
    """Attend in blocks of `chunk_size` queries by `chunk_size` keys.

    Equals `softmax.fused_attention` with the mask
    `masks.SegmentMask(q_segment_ids, k_segment_ids, causal).dense()`, to
    float32 summation order. There is no dropout and no logit bias. Rows with
    no visible key (padding queries) return zeros. Lengths need not be
    multiples of `chunk_size`: the inputs are padded with segment id 0 and the
    padding is sliced off.

    Args:
      q: `[B, T, N, H]` queries.
      k: `[B, S, N, H]` keys.
      v: `[B, S, N, H]` values.
      q_segment_ids: `[B, T]` int segment ids of the queries.
      k_segment_ids: `[B, S]` int segment ids of the keys.
      causal: also hide keys after each query, by index.
      chunk_size: queries and keys per block; clipped to T and to S.

    Returns:
      `[B, T, N, H]` attention output in the dtype of `q`.
    """
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size={chunk_size} is invalid; use a positive number of "
            "tokens per block, such as 512."
        )
    batch, q_length, _, _ = q.shape
    k_length = k.shape[1]
    if q_segment_ids.shape != (batch, q_length):
        raise ValueError(
            f"q_segment_ids shape {q_segment_ids.shape} does not match the "
            f"[B, T] = {(batch, q_length)} of q with shape {q.shape}."
        )
    if k_segment_ids.shape != (batch, k_length):
        raise ValueError(
            f"k_segment_ids shape {k_segment_ids.shape} does not match the "
            f"[B, S] = {(batch, k_length)} of k with shape {k.shape}."
        )
    q_chunk = min(chunk_size, q_length)
    k_chunk = min(chunk_size, k_length)
    q_padded, q_segments = _pad_to_multiple(q, q_segment_ids, q_chunk)
    k_padded, k_segments = _pad_to_multiple(k, k_segment_ids, k_chunk)
    v_padded, _ = _pad_to_multiple(v, k_segment_ids, k_chunk)
    out = _attention(
        q_padded,
        k_padded,
        v_padded,
        q_segments.astype(jnp.int32),
        k_segments.astype(jnp.int32),
        causal,
        q_chunk,
        k_chunk,
        k_length - q_length,
    )
    return out[:, :q_length]


def _pad_to_multiple(x: Array, segment_ids: Array, multiple: int):
    """Pad the length axis of x and its segment ids up to a multiple, with id 0."""
    pad = -x.shape[1] % multiple
    if not pad:
        return x, segment_ids
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
    return x, segment_ids


def _split_chunks(x: Array, chunk: int) -> Array:
    """`[B, L, ...]` -> `[L // chunk, B, chunk, ...]`, chunks first for loops."""
    batch, length = x.shape[:2]
    x = x.reshape(batch, length // chunk, chunk, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1)


def _merge_chunks(x: Array) -> Array:
    """Invert `_split_chunks`."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _block_mask(
    q_segments: Array,
    k_segments: Array,
    q_start: Array,
    k_start: Array,
    causal: bool,
    causal_offset: int,
) -> Array:
    """Build the bool `[B, 1, Tc, Sc]` mask of one block from its segment ids."""
    allowed = q_segments[:, :, None] == k_segments[:, None, :]
    allowed = allowed & (k_segments != 0)[:, None, :]
    if causal:
        q_index = q_start + jnp.arange(q_segments.shape[1]) + causal_offset
        k_index = k_start + jnp.arange(k_segments.shape[1])
        allowed = allowed & (k_index[None, None, :] <= q_index[None, :, None])
    return allowed[:, None, :, :]


def _block_logits(q_block: Array, k_block: Array, mask: Array) -> Array:
    """Return the float32 `[B, N, Tc, Sc]` scaled logits, masked to a large negative."""
    scale = q_block.shape[-1] ** -0.5
    logits = jnp.einsum(
        "bqnh,bknh->bnqk", q_block, k_block, preferred_element_type=jnp.float32
    )
    return jnp.where(mask, logits * scale, _MASKED_LOGIT)


def _visible_key_chunks(
    i: Array, q_chunk: int, k_chunk: int, num_k_chunks: int, causal_offset: int
) -> Array:
    """Count the leading key chunks that causal query chunk i can see."""
    last_key = (i + 1) * q_chunk - 1 + causal_offset
    return jnp.clip(last_key // k_chunk + 1, 0, num_k_chunks)


def _first_query_chunk(
    j: Array, q_chunk: int, k_chunk: int, num_q_chunks: int, causal_offset: int
) -> Array:
    """Return the first causal query chunk that can see key chunk j."""
    return jnp.clip((j * k_chunk - causal_offset) // q_chunk, 0, num_q_chunks)


def _forward(q, k, v, q_segments, k_segments, causal, q_chunk, k_chunk, offset):
    """Return the `[B, T, N, H]` output and the float32 `[B, T, N]` log-sum-exp."""
    batch, _, heads, head_dim = q.shape
    q_chunks = _split_chunks(q, q_chunk)
    k_chunks = _split_chunks(k, k_chunk)
    v_chunks = _split_chunks(v, k_chunk)
    q_segment_chunks = _split_chunks(q_segments, q_chunk)
    k_segment_chunks = _split_chunks(k_segments, k_chunk)
    num_k_chunks = k_chunks.shape[0]

    def query_step(_, inputs):
        i, q_block, q_block_segments = inputs

        def key_step(j, carry):
            row_max, row_sum, accumulator = carry
            mask = _block_mask(
                q_block_segments,
                k_segment_chunks[j],
                i * q_chunk,
                j * k_chunk,
                causal,
                offset,
            )
            logits = _block_logits(q_block, k_chunks[j], mask)
            new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
            weights = jnp.where(mask, jnp.exp(logits - new_max[..., None]), 0.0)
            correction = jnp.exp(row_max - new_max)
            row_sum = row_sum * correction + jnp.sum(weights, axis=-1)
            values = jnp.einsum(
                "bnqk,bknh->bnqh",
                weights.astype(v.dtype),
                v_chunks[j],
                preferred_element_type=jnp.float32,
            )
            accumulator = accumulator * correction[..., None] + values
            return new_max, row_sum, accumulator

        stats_shape = (batch, heads, q_chunk)
        initial = (
            jnp.full(stats_shape, _MASKED_LOGIT, jnp.float32),
            jnp.zeros(stats_shape, jnp.float32),
            jnp.zeros((*stats_shape, head_dim), jnp.float32),
        )
        if causal:
            stop = _visible_key_chunks(i, q_chunk, k_chunk, num_k_chunks, offset)
        else:
            stop = num_k_chunks
        row_max, row_sum, accumulator = lax.fori_loop(0, stop, key_step, initial)
        seen = row_sum > 0.0
        out = accumulator / jnp.where(seen, row_sum, 1.0)[..., None]
        log_sum_exp = jnp.where(
            seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), 0.0
        )
        # [B, N, Tc, H] -> [B, Tc, N, H] and [B, N, Tc] -> [B, Tc, N].
        out = jnp.swapaxes(out, 1, 2).astype(q.dtype)
        return None, (out, jnp.swapaxes(log_sum_exp, 1, 2))

    indices = jnp.arange(q_chunks.shape[0])
    _, (out, log_sum_exp) = lax.scan(
        query_step, None, (indices, q_chunks, q_segment_chunks)
    )
    return _merge_chunks(out), _merge_chunks(log_sum_exp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attention(q, k, v, q_segments, k_segments, causal, q_chunk, k_chunk, offset):
    out, _ = _forward(q, k, v, q_segments, k_segments, causal, q_chunk, k_chunk, offset)
    return out


def _attention_forward(
    q, k, v, q_segments, k_segments, causal, q_chunk, k_chunk, offset
):
    out, log_sum_exp = _forward(
        q, k, v, q_segments, k_segments, causal, q_chunk, k_chunk, offset
    )
    return out, (q, k, v, q_segments, k_segments, out, log_sum_exp)


def _attention_backward(causal, q_chunk, k_chunk, offset, residuals, d_out):
    """Recompute each block's weights from the log-sum-exp and accumulate dq,
    dk and dv: an outer scan over key chunks, an inner loop over query chunks."""
    q, k, v, q_segments, k_segments, out, log_sum_exp = residuals
    scale = q.shape[-1] ** -0.5
    # D_t = sum_h dO_th * O_th, the row term of the softmax gradient: [B, T, N].
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    q_chunks = _split_chunks(q, q_chunk)
    d_out_chunks = _split_chunks(d_out.astype(q.dtype), q_chunk)
    log_sum_exp_chunks = _split_chunks(log_sum_exp, q_chunk)
    row_dot_chunks = _split_chunks(row_dot, q_chunk)
    q_segment_chunks = _split_chunks(q_segments, q_chunk)
    num_q_chunks = q_chunks.shape[0]

    def key_step(d_q, inputs):
        j, k_block, v_block, k_block_segments = inputs

        def query_step(i, carry):
            d_q, d_k_block, d_v_block = carry
            q_block = q_chunks[i]
            d_out_block = d_out_chunks[i]
            mask = _block_mask(
                q_segment_chunks[i],
                k_block_segments,
                i * q_chunk,
                j * k_chunk,
                causal,
                offset,
            )
            logits = _block_logits(q_block, k_block, mask)
            # [B, Tc, N] -> [B, N, Tc, 1], to broadcast over the keys.
            block_log_sum_exp = jnp.swapaxes(log_sum_exp_chunks[i], 1, 2)[..., None]
            weights = jnp.where(mask, jnp.exp(logits - block_log_sum_exp), 0.0)

            d_v_block += jnp.einsum(
                "bnqk,bqnh->bknh",
                weights.astype(q.dtype),
                d_out_block,
                preferred_element_type=jnp.float32,
            )
            d_weights = jnp.einsum(
                "bqnh,bknh->bnqk",
                d_out_block,
                v_block,
                preferred_element_type=jnp.float32,
            )
            block_row_dot = jnp.swapaxes(row_dot_chunks[i], 1, 2)[..., None]
            d_logits = (weights * (d_weights - block_row_dot) * scale).astype(q.dtype)

            d_q_block = jnp.einsum(
                "bnqk,bknh->bqnh",
                d_logits,
                k_block,
                preferred_element_type=jnp.float32,
            )
            d_q = d_q.at[i].add(d_q_block)
            d_k_block += jnp.einsum(
                "bnqk,bqnh->bknh",
                d_logits,
                q_block,
                preferred_element_type=jnp.float32,
            )
            return d_q, d_k_block, d_v_block

        if causal:
            start = _first_query_chunk(j, q_chunk, k_chunk, num_q_chunks, offset)
        else:
            start = 0
        zeros = jnp.zeros(k_block.shape, jnp.float32)
        d_q, d_k_block, d_v_block = lax.fori_loop(
            start, num_q_chunks, query_step, (d_q, zeros, zeros)
        )
        return d_q, (d_k_block.astype(k.dtype), d_v_block.astype(v.dtype))

    k_chunks = _split_chunks(k, k_chunk)
    inputs = (
        jnp.arange(k_chunks.shape[0]),
        k_chunks,
        _split_chunks(v, k_chunk),
        _split_chunks(k_segments, k_chunk),
    )
    d_q = jnp.zeros(q_chunks.shape, jnp.float32)
    d_q, (d_k, d_v) = lax.scan(key_step, d_q, inputs)
    d_q = _merge_chunks(d_q).astype(q.dtype)
    # Segment ids are integers and get no cotangent.
    return d_q, _merge_chunks(d_k), _merge_chunks(d_v), None, None


_attention.defvjp(_attention_forward, _attention_backward)
