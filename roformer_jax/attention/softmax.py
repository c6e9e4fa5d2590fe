"""Scaled dot-product softmax attention.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim. Inputs are `[B, T, N, H]` queries and `[B, S, N, H]` keys and values.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

_MASKED_LOGIT = -1e30  # Finite, so fully masked rows give zeros, not NaN.


def attention_weights(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """Compute the softmax attention weights, masked and with dropout.

    Args:
      q: `[B, T, N, H]` queries.
      k: `[B, S, N, H]` keys.
      mask: bool `[B, 1 or N, T, S]`, True where attention is allowed.
      bias: float `[B or 1, N or 1, T, S]` added to the logits.
      dropout_rate: probability of dropping an attention weight.
      dropout_rng: key for dropout; dropout applies only when it is given.

    Returns:
      `[B, N, T, S]` float32 weights, zero where masked. Logits and softmax
      run in float32.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    return weights


def weighted_values(weights: Array, v: Array) -> Array:
    """Sum `[B, S, N, H]` values with `[B, N, T, S]` weights: `[B, T, N, H]`.

    The weights are cast to the dtype of `v` first, so the result has it too.
    """
    return jnp.einsum("bnts,bsnh->btnh", weights.astype(v.dtype), v)


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
) -> Array:
    """Attend through `jax.nn.dot_product_attention` (no dropout).

    Same result as `attention_weights` then `weighted_values` without
    dropout; XLA or cuDNN picks the kernel.
    Rows whose keys are all masked return zeros here too.
    """
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    if mask is not None:
        any_key = jnp.any(mask, axis=-1)  # [B, 1, T]
        out = jnp.where(jnp.moveaxis(any_key, 1, -1)[..., None], out, 0.0)
    return out
