"""Scaled dot-product softmax attention.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim. Inputs are `[B, T, N, H]` queries and `[B, S, N, H]` keys and values.

Besides the XLA paths (`attention_weights` with `weighted_values`, and
`fused_attention`), `cudnn_attention` and `pallas_attention` call the GPU and
TPU flash kernels, and `select_implementation` picks a path for
`ModelConfig.attention_impl`. The chunked path is in `chunked.py`.
"""

import jax
import jax.numpy as jnp

from roformer_jax import dropout
from roformer_jax.attention.masks import SegmentMask, segment_mask

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
        weights = dropout.dropout(weights, dropout_rate, dropout_rng)
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
    """Attend without dropout: `attention_weights` then `weighted_values`.

    On the CPU this runs those two functions. Elsewhere it calls
    `jax.nn.dot_product_attention`, whose kernel XLA or cuDNN picks. Rows
    whose keys are all masked return zeros on both paths.

    NOTE: on the XLA CPU backend (jax 0.10.2), `jax.nn.dot_product_attention`
    reshapes the heads into key/value groups of one, and the extra axis costs
    transposes of the T x S weights. The masked-LM train step of
    `benchmarks/shapes.py` config A took 1.86 s through it and 1.77 s
    through the einsums (medians of 5, alternating).
    """
    if current_backend() == "cpu":
        return weighted_values(attention_weights(q, k, mask=mask, bias=bias), v)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    if mask is not None:
        any_key = jnp.any(mask, axis=-1)  # [B, 1, T]
        out = jnp.where(jnp.moveaxis(any_key, 1, -1)[..., None], out, 0.0)
    return out


# Values of `ModelConfig.attention_impl`.
IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "pallas")

# cuDNN flash attention takes bfloat16 or float16 inputs and, on every GPU
# generation that JAX 0.10 supports, a head dim that is a multiple of 8 up to
# 128 (Hopper allows 256). `jax._src.cudnn.fused_attention_stablehlo` checks
# both.
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128

# The Pallas TPU flash kernel tiles the length axes in blocks of 128 tokens
# (its default `BlockSizes`), so `pallas_attention` pads to a multiple of it.
PALLAS_BLOCK = 128


def current_backend() -> str:
    """Return the platform of the default JAX backend: cpu, gpu or tpu."""
    return jax.default_backend()


def select_implementation(
    requested: str,
    *,
    backend: str,
    dtype: str,
    head_dim: int,
    has_bias: bool,
    needs_weights: bool,
    dropout: bool,
    has_segment_ids: bool,
) -> tuple[str, str | None]:
    """Choose the attention path for `ModelConfig.attention_impl`.

    "auto" takes cudnn on a GPU and pallas on a TPU when they can run, and xla
    otherwise. "chunked" runs whenever segment ids are given (the caller
    rejects a bias, dropout or the need for weights first). Without segment
    ids (cached decoding, or a caller that passes a dense mask) every request
    runs the xla path.

    Args:
      requested: one of `IMPLEMENTATIONS`.
      backend: "cpu", "gpu" or "tpu" (`current_backend()`).
      dtype: the compute dtype of the queries, keys and values.
      head_dim: H.
      has_bias: the position encoding adds a logit bias.
      needs_weights: the position encoding reads the attention weights.
      dropout: attention dropout is active in this call.
      has_segment_ids: the mask arrived as a `masks.SegmentMask`.

    Returns:
      The path to run ("xla", "chunked", "cudnn" or "pallas"), and why an
      explicit "cudnn" or "pallas" request could not run, or None.
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(
            f"model.attention_impl={requested!r} is invalid; use one of "
            f"{IMPLEMENTATIONS}."
        )
    if requested == "xla" or not has_segment_ids:
        return "xla", None
    if requested == "chunked":
        return "chunked", None
    if requested == "auto":
        if backend == "gpu" and not _cudnn_obstacle(
            dtype, head_dim, has_bias, needs_weights, dropout
        ):
            return "cudnn", None
        if backend == "tpu" and not _pallas_obstacle(needs_weights, dropout):
            return "pallas", None
        return "xla", None
    if requested == "cudnn":
        if backend != "gpu":
            return "xla", f"the backend is {backend!r}, not 'gpu'"
        reason = _cudnn_obstacle(dtype, head_dim, has_bias, needs_weights, dropout)
    else:
        if backend != "tpu":
            return "xla", f"the backend is {backend!r}, not 'tpu'"
        reason = _pallas_obstacle(needs_weights, dropout)
    if reason:
        return "xla", reason
    return requested, None


def _cudnn_obstacle(
    dtype: str, head_dim: int, has_bias: bool, needs_weights: bool, dropout: bool
) -> str | None:
    if needs_weights:
        return "the position encoding needs the attention weights"
    if dropout:
        return "attention dropout is active"
    if has_bias:
        return "the position encoding adds a logit bias, which this path omits"
    if str(dtype) not in CUDNN_DTYPES:
        return f"the compute dtype {dtype} is not one of {CUDNN_DTYPES}"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return (
            f"the head dim {head_dim} is not a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}"
        )
    return None


def _pallas_obstacle(needs_weights: bool, dropout: bool) -> str | None:
    if needs_weights:
        return "the position encoding needs the attention weights"
    if dropout:
        return "attention dropout is active"
    return None


def _zero_padding_rows(out: Array, q_segment_ids: Array) -> Array:
    """Zero the `[B, T, N, H]` rows of padding queries (segment id 0).

    In self-attention every other query may attend to at least its own key,
    so these are the rows whose keys are all masked, which `fused_attention`
    zeroes.
    """
    real = (q_segment_ids != 0)[:, :, None, None]
    return jnp.where(real, out, jnp.zeros((), out.dtype))


def cudnn_attention(q: Array, k: Array, v: Array, *, mask: SegmentMask) -> Array:
    """Attend through cuDNN flash attention (`jax.nn.dot_product_attention`).

    For self-attention (T == S) without bias or dropout, in bfloat16 or
    float16. The causal part goes to cuDNN as `is_causal`, so it skips the
    blocks above the diagonal.

    NOTE: the segment part of the mask reaches cuDNN as a dense `[B, 1, T, S]`
    bias (JAX converts a boolean mask to one), so memory still grows as T * S.
    Use attention_impl="chunked" or a TPU for the longest contexts. This path
    has not been run on a GPU in this repository's tests.
    """
    segments = segment_mask(mask.q_segment_ids, mask.k_segment_ids)
    out = jax.nn.dot_product_attention(
        q, k, v, mask=segments, is_causal=mask.causal, implementation="cudnn"
    )
    return _zero_padding_rows(out, mask.q_segment_ids)


def pallas_attention(
    q: Array, k: Array, v: Array, *, mask: SegmentMask, bias: Array | None = None
) -> Array:
    """Attend through the Pallas TPU flash attention kernel.

    For self-attention (T == S) without dropout. Segment ids and the causal
    flag go to the kernel, which builds each block's mask, and a logit bias
    is broadcast to `[B, N, T, S]`. Lengths are padded to a multiple of
    `PALLAS_BLOCK` with segment id 0. On a CPU this runs only inside
    `jax.experimental.pallas.tpu.force_tpu_interpret_mode()`.
    """
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    batch, length, heads, head_dim = q.shape
    pad = -length % PALLAS_BLOCK
    q_segments = jnp.pad(mask.q_segment_ids.astype(jnp.int32), ((0, 0), (0, pad)))
    k_segments = jnp.pad(mask.k_segment_ids.astype(jnp.int32), ((0, 0), (0, pad)))

    def heads_first(x: Array) -> Array:
        # [B, T, N, H] -> [B, N, T + pad, H], the kernel's layout.
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.swapaxes(x, 1, 2)

    if bias is not None:
        bias = jnp.broadcast_to(bias, (batch, heads, length, length))
        bias = jnp.pad(bias.astype(jnp.float32), ((0, 0), (0, 0), (0, pad), (0, pad)))
    # Padding queries attend to padding keys (both id 0), so no row is empty.
    out = tpu_flash.flash_attention(
        heads_first(q),
        heads_first(k),
        heads_first(v),
        bias,
        tpu_flash.SegmentIds(q=q_segments, kv=k_segments),
        causal=mask.causal,
        sm_scale=head_dim**-0.5,
    )
    out = jnp.swapaxes(out, 1, 2)[:, :length]
    return _zero_padding_rows(out, mask.q_segment_ids)
