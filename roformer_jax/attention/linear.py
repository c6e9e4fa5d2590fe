"""Kernelised linear attention, with RoPE applied to the feature maps.

Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs") replaces
the softmax weight ``exp(q_m . k_n)`` by ``phi(q_m) . phi(k_n)`` for a feature
map phi with non-negative outputs, so keys and values can be summed once and
reused by every query. RoFormer (Su et al. 2021, arXiv:2104.09864) equips
linear attention with RoPE, and this module computes

    out_m = sum_n (R_m phi(q_m)) . (R_n phi(k_n)) v_n / sum_n phi(q_m) . phi(k_n)

where R_m is RoPE's rotation at position m over the M features of phi. Only
the numerator is rotated. For a positive feature map every term
``phi(q_m) . phi(k_n)`` of the normaliser is positive, so the normaliser is
positive whenever a query sees at least one real key whose features have not
underflowed. Rotated features have no such guarantee. Their dot product can be
negative or zero, and a normaliser built from them could vanish or change sign.
With RoPE the weights ``score / normaliser`` therefore no longer sum to one,
and the output is not a convex combination of the values.

Every normaliser gets ``eps`` added before the division, so a query whose
visible keys are all padding returns zeros instead of NaN. The relative error
this adds is ``eps / normaliser``. The default is 1e-12, not a larger value such
as 1e-6, because the scale of stabilised FAVOR+ features is arbitrary, and
causal normalisers can be small. With q and k entries drawn from N(0, 1),
H = 64, M = 256 and T = 512 (one draw, seed 0), 9% of the causal normalisers
were below 1e-4 and the smallest was 4e-7. An eps of 1e-6 would shift those
outputs by more than 1%.

Feature maps:

- `elu_feature_map`: ``elu(x) + 1`` (Katharopoulos et al. 2020).
- `favor_feature_map` and `favor_features`: FAVOR+ positive random features of
  the softmax kernel (Choromanski et al. 2021, "Rethinking Attention with
  Performers"), with projections from `favor_projection`.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, M feature dim, Hv value head dim. Inputs follow
`roformer_jax.attention.softmax`: ``[B, T, N, H]`` arrays, float32 internals and
an output of the value dtype.
"""

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
RotateFn = Callable[[Array, Array], Array]

DEFAULT_EPS = 1e-12


def elu_feature_map(x: Array) -> Array:
    """Map ``[B, T, N, H]`` queries or keys to ``elu(x) + 1``, float32 and positive.

    ``elu(x) + 1`` is ``x + 1`` for x > 0 and ``exp(x)`` otherwise. Computing
    ``exp(x)`` directly, not ``expm1(x) + 1``, keeps entries positive down to
    x of about -103, where float32 ``exp`` underflows to 0.
    """
    x = jnp.asarray(x)
    _check_rank4("x", x)
    x = x.astype(jnp.float32)
    # Where x > 0 the exp branch computes exp(0), so it cannot overflow and
    # give NaN gradients through the unused branch.
    return jnp.where(x > 0, x + 1.0, jnp.exp(jnp.where(x > 0, 0.0, x)))


def favor_projection(
    key: Array, num_features: int, head_dim: int, *, orthogonal: bool = True
) -> Array:
    """Draw the ``[M, H]`` float32 random projection of FAVOR+ features.

    With ``orthogonal=True`` the rows come in blocks of H mutually orthogonal
    rows, each block the transposed Q factor of the QR decomposition of an
    ``[H, H]`` Gaussian matrix, with signs fixed so that Q is Haar distributed.
    The last block is cut to the rows still needed. Each row is then rescaled
    to the norm of an independent ``N(0, I_H)`` vector, so every row on its
    own is distributed as a Gaussian row and the kernel estimate stays
    unbiased. With ``orthogonal=False`` the rows are iid ``N(0, I_H)``.

    Args:
      key: JAX PRNG key.
      num_features: M, the number of random features, a positive int.
      head_dim: H, a positive int.
      orthogonal: draw orthogonal blocks instead of iid rows.
    """
    _check_positive_int("num_features", num_features)
    _check_positive_int("head_dim", head_dim)
    if not orthogonal:
        return jax.random.normal(key, (num_features, head_dim), jnp.float32)

    num_blocks = -(-num_features // head_dim)
    block_key, norm_key = jax.random.split(key)
    gaussian = jax.random.normal(
        block_key, (num_blocks, head_dim, head_dim), jnp.float32
    )
    q, r = jnp.linalg.qr(gaussian)
    # QR leaves the sign of each column of Q to the algorithm. Multiplying
    # column j by the sign of r[j, j] makes Q Haar distributed.
    diagonal = jnp.diagonal(r, axis1=-2, axis2=-1)
    q = q * jnp.where(diagonal < 0, -1.0, 1.0)[:, None, :]
    # Rows of Q^T are orthonormal: [blocks, H, H] -> [blocks * H, H] -> [M, H].
    directions = jnp.swapaxes(q, -1, -2).reshape(num_blocks * head_dim, head_dim)
    directions = directions[:num_features]

    norms = jnp.linalg.norm(
        jax.random.normal(norm_key, (num_features, head_dim), jnp.float32), axis=-1
    )
    return directions * norms[:, None]


def favor_feature_map(
    x: Array, projection: Array, *, is_query: bool, stabilize: bool = True
) -> Array:
    """Compute FAVOR+ positive random features of the softmax kernel.

    For x already scaled by ``H ** -0.25`` the features are
    ``phi(x) = exp(W x - |x|^2 / 2 - c) / sqrt(M)`` with W the projection.
    With ``c = 0``, ``E[phi(x) . phi(y)] = exp(x . y)`` over Gaussian rows of
    W. `favor_features` does the scaling.

    The stabiliser c keeps ``exp`` from overflowing. It scales the features of
    a query by one positive factor ``exp(-c)`` per token, and all keys of one
    batch element and head by one shared factor. Each query's numerator and
    normaliser are then both multiplied by the same two factors, which cancel
    in their ratio. So attention outputs do not change, up to the ``eps`` of
    `linear_attention` and float32 underflow.

    - Queries: c is the max over the M features of ``W x - |x|^2 / 2``, so the
      largest feature of every query is ``1 / sqrt(M)``.
    - Keys: c is the max over the features and the S tokens of each batch
      element and head, so the largest key feature is ``1 / sqrt(M)``. A key
      whose features sit more than about 87 below that max underflows to
      zeros and drops out of attention.

    c is wrapped in ``lax.stop_gradient``, because its exact gradient
    contribution to attention outputs is zero.

    NOTE: padding keys take part in the key max. Zero-vector padding gives a
    value of 0 there, which is harmless unless real keys sit far below it.

    Args:
      x: ``[B, T, N, H]`` scaled queries or keys.
      projection: ``[M, H]`` projection from `favor_projection`.
      is_query: choose the query stabiliser (per token) or the key stabiliser
        (shared over tokens).
      stabilize: subtract c. Pass False only to get the unbiased estimate
        itself, which overflows float32 once ``W x - |x|^2 / 2`` exceeds 88.

    Returns:
      ``[B, T, N, M]`` float32 features, all positive unless underflowed.
    """
    x = jnp.asarray(x)
    _check_rank4("x", x)
    projection = _check_projection(projection, x.shape[-1], "x")
    num_features = projection.shape[0]

    x = x.astype(jnp.float32)
    projected = jnp.einsum("btnh,mh->btnm", x, projection)
    half_square_norm = 0.5 * jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    exponent = projected - half_square_norm
    if stabilize:
        # Queries: one constant per token. Keys: one per batch element and head,
        # over all tokens, because only a constant shared by every key cancels.
        reduce_axes = -1 if is_query else (1, 3)
        stabilizer = jnp.max(exponent, axis=reduce_axes, keepdims=True)
        exponent = exponent - jax.lax.stop_gradient(stabilizer)
    return jnp.exp(exponent) / math.sqrt(num_features)


def favor_features(
    q: Array, k: Array, projection: Array, *, stabilize: bool = True
) -> tuple[Array, Array]:
    """Compute FAVOR+ features of queries and keys for softmax attention.

    Both are scaled by ``H ** -0.25`` first, so that without stabilisation
    ``E[phi(q) . phi(k)] = exp(q . k / sqrt(H))``, the unnormalised weight of
    softmax attention. With stabilisation (the default) the features carry the
    positive factors described in `favor_feature_map`, which cancel in
    `linear_attention`.

    Args:
      q: ``[B, T, N, H]`` queries.
      k: ``[B, S, N, H]`` keys.
      projection: ``[M, H]`` projection from `favor_projection`.
      stabilize: as in `favor_feature_map`.

    Returns:
      ``([B, T, N, M], [B, S, N, M])`` float32 query and key features.
    """
    q = jnp.asarray(q)
    k = jnp.asarray(k)
    _check_rank4("q", q)
    _check_rank4("k", k)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q head dim {q.shape[-1]} (q shape {q.shape}) differs from k head "
            f"dim {k.shape[-1]} (k shape {k.shape}). Pass queries and keys of "
            "the same head dim."
        )
    scale = q.shape[-1] ** -0.25
    q_features = favor_feature_map(
        q.astype(jnp.float32) * scale, projection, is_query=True, stabilize=stabilize
    )
    k_features = favor_feature_map(
        k.astype(jnp.float32) * scale, projection, is_query=False, stabilize=stabilize
    )
    return q_features, k_features


def linear_attention(
    q_features: Array,
    k_features: Array,
    v: Array,
    *,
    causal: bool,
    key_mask: Array | None = None,
    rotate: RotateFn | None = None,
    q_positions: Array | None = None,
    k_positions: Array | None = None,
    chunk_size: int = 128,
    eps: float = DEFAULT_EPS,
) -> Array:
    """Attend with feature maps in time and memory linear in the sequence length.

    Computes the module docstring's formula without a T x S matrix.
    Bidirectional attention sums ``(R_n phi(k_n)) v_n^T`` into an
    ``[B, N, M, Hv]`` state once. Causal attention scans over chunks of
    ``chunk_size`` tokens, carrying the running sums over earlier chunks. Inside
    a chunk it uses a masked ``[chunk, chunk]`` score matrix. T is padded up to
    a multiple of the chunk internally. Works under ``jax.jit`` and
    ``jax.grad``.

    Args:
      q_features: ``[B, T, N, M]`` non-negative query features.
      k_features: ``[B, S, N, M]`` non-negative key features.
      v: ``[B, S, N, Hv]`` values.
      causal: let query t see only keys s <= t, by index. Needs T == S.
      key_mask: ``[B, S]`` bool, False for padding keys. Their features and
        values are zeroed, so they add nothing to numerator or normaliser.
      rotate: optional ``(features [B, L, N, M], positions [B, L]) -> rotated
        features``, for example ``functools.partial(apply_rotary, base=10000.0,
        layout="half")`` from `roformer_jax.rotary`. It is applied to the
        numerator's features only. M must be even.
      q_positions: ``[B, T]`` integer query positions, required with rotate.
      k_positions: ``[B, S]`` integer key positions, required with rotate.
      chunk_size: tokens per causal chunk, a positive int. Values above T
        use one chunk of T tokens. Ignored when bidirectional.
      eps: added to every normaliser before the division. The module
        docstring explains the default.

    Returns:
      ``[B, T, N, Hv]`` array of v's dtype. The computation runs in float32.
    """
    _check_positive_int("chunk_size", chunk_size)
    inputs = _prepare_inputs(
        q_features,
        k_features,
        v,
        causal=causal,
        key_mask=key_mask,
        rotate=rotate,
        q_positions=q_positions,
        k_positions=k_positions,
    )
    if causal:
        out = _causal_chunked(*inputs, chunk_size=chunk_size, eps=eps)
    else:
        out = _bidirectional(*inputs, eps=eps)
    return out.astype(jnp.asarray(v).dtype)


def quadratic_linear_attention(
    q_features: Array,
    k_features: Array,
    v: Array,
    *,
    causal: bool,
    key_mask: Array | None = None,
    rotate: RotateFn | None = None,
    q_positions: Array | None = None,
    k_positions: Array | None = None,
    eps: float = DEFAULT_EPS,
) -> Array:
    """Compute `linear_attention` through an explicit ``[B, N, T, S]`` score matrix.

    This is the reference path. It needs memory quadratic in the sequence
    length but is simpler and faster for short sequences. Arguments and result
    are those of `linear_attention`, which has no chunk_size here.
    """
    q_rotated, q_plain, k_rotated, k_plain, values = _prepare_inputs(
        q_features,
        k_features,
        v,
        causal=causal,
        key_mask=key_mask,
        rotate=rotate,
        q_positions=q_positions,
        k_positions=k_positions,
    )
    scores = jnp.einsum("btnm,bsnm->bnts", q_rotated, k_rotated)
    weights = jnp.einsum("btnm,bsnm->bnts", q_plain, k_plain)
    if causal:
        length = q_rotated.shape[1]
        visible = jnp.tril(jnp.ones((length, length), dtype=bool))
        scores = jnp.where(visible, scores, 0.0)
        weights = jnp.where(visible, weights, 0.0)
    numerator = jnp.einsum("bnts,bsnh->btnh", scores, values)
    normaliser = jnp.einsum("bnts->btn", weights)
    out = numerator / (normaliser + eps)[..., None]
    return out.astype(jnp.asarray(v).dtype)


def _bidirectional(
    q_rotated: Array,
    q_plain: Array,
    k_rotated: Array,
    k_plain: Array,
    values: Array,
    *,
    eps: float,
) -> Array:
    key_value_sum = jnp.einsum("bsnm,bsnh->bnmh", k_rotated, values)
    key_sum = jnp.sum(k_plain, axis=1)  # [B, N, M]
    numerator = jnp.einsum("btnm,bnmh->btnh", q_rotated, key_value_sum)
    normaliser = jnp.einsum("btnm,bnm->btn", q_plain, key_sum)
    return numerator / (normaliser + eps)[..., None]


def _causal_chunked(
    q_rotated: Array,
    q_plain: Array,
    k_rotated: Array,
    k_plain: Array,
    values: Array,
    *,
    chunk_size: int,
    eps: float,
) -> Array:
    batch, length, heads, num_features = q_rotated.shape
    value_dim = values.shape[-1]
    chunk_size = min(chunk_size, length)
    num_chunks = -(-length // chunk_size)
    padding = num_chunks * chunk_size - length

    def to_chunks(x: Array) -> Array:
        # Zero padding at the end: padded keys add nothing, and padded queries
        # are cut off below. [B, T, N, F] -> [chunks, B, chunk, N, F].
        x = jnp.pad(x, ((0, 0), (0, padding), (0, 0), (0, 0)))
        x = x.reshape(batch, num_chunks, chunk_size, heads, x.shape[-1])
        return jnp.moveaxis(x, 1, 0)

    visible = jnp.tril(jnp.ones((chunk_size, chunk_size), dtype=bool))

    def step(
        carry: tuple[Array, Array], chunk: tuple[Array, ...]
    ) -> tuple[tuple[Array, Array], Array]:
        key_value_sum, key_sum = carry  # [B, N, M, Hv], [B, N, M]
        q_rot, q_pl, k_rot, k_pl, val = chunk

        # Keys of earlier chunks, through the running sums.
        numerator = jnp.einsum("bcnm,bnmh->bcnh", q_rot, key_value_sum)
        normaliser = jnp.einsum("bcnm,bnm->bcn", q_pl, key_sum)

        # Keys of this chunk at or before each query, through a masked matrix.
        scores = jnp.einsum("bcnm,bdnm->bncd", q_rot, k_rot)
        scores = jnp.where(visible, scores, 0.0)
        numerator = numerator + jnp.einsum("bncd,bdnh->bcnh", scores, val)
        weights = jnp.einsum("bcnm,bdnm->bncd", q_pl, k_pl)
        weights = jnp.where(visible, weights, 0.0)
        normaliser = normaliser + jnp.einsum("bncd->bcn", weights)

        key_value_sum = key_value_sum + jnp.einsum("bdnm,bdnh->bnmh", k_rot, val)
        key_sum = key_sum + jnp.sum(k_pl, axis=1)
        out = numerator / (normaliser + eps)[..., None]
        return (key_value_sum, key_sum), out

    initial = (
        jnp.zeros((batch, heads, num_features, value_dim), jnp.float32),
        jnp.zeros((batch, heads, num_features), jnp.float32),
    )
    chunks = tuple(
        to_chunks(x) for x in (q_rotated, q_plain, k_rotated, k_plain, values)
    )
    _, out = jax.lax.scan(step, initial, chunks)
    # [chunks, B, chunk, N, Hv] -> [B, T + padding, N, Hv] -> [B, T, N, Hv]
    out = jnp.moveaxis(out, 0, 1).reshape(batch, -1, heads, value_dim)
    return out[:, :length]


def _prepare_inputs(
    q_features: Array,
    k_features: Array,
    v: Array,
    *,
    causal: bool,
    key_mask: Array | None,
    rotate: RotateFn | None,
    q_positions: Array | None,
    k_positions: Array | None,
) -> tuple[Array, Array, Array, Array, Array]:
    """Check the inputs and return float32 (q_rotated, q, k_rotated, k, v).

    Without rotate, the rotated arrays are the unrotated ones.
    """
    q_features = jnp.asarray(q_features)
    k_features = jnp.asarray(k_features)
    v = jnp.asarray(v)
    _check_shapes(q_features, k_features, v, causal=causal)

    q_plain = q_features.astype(jnp.float32)
    k_plain = k_features.astype(jnp.float32)
    values = v.astype(jnp.float32)
    if key_mask is not None:
        key_mask = _check_key_mask(key_mask, k_features.shape)
        # Zero the values too, so NaN or inf in padding cannot reach the output.
        keep = key_mask[:, :, None, None]
        k_plain = jnp.where(keep, k_plain, 0.0)
        values = jnp.where(keep, values, 0.0)

    if rotate is None:
        return q_plain, q_plain, k_plain, k_plain, values

    _check_rotation_inputs(q_features, k_features, q_positions, k_positions)
    q_rotated = jnp.asarray(rotate(q_plain, q_positions)).astype(jnp.float32)
    k_rotated = jnp.asarray(rotate(k_plain, k_positions)).astype(jnp.float32)
    return q_rotated, q_plain, k_rotated, k_plain, values


def _check_shapes(
    q_features: Array, k_features: Array, v: Array, *, causal: bool
) -> None:
    _check_rank4("q_features", q_features)
    _check_rank4("k_features", k_features)
    _check_rank4("v", v)
    q_batch, q_length, q_heads, q_dim = q_features.shape
    k_batch, k_length, k_heads, k_dim = k_features.shape
    if (q_batch, q_heads, q_dim) != (k_batch, k_heads, k_dim):
        raise ValueError(
            f"q_features shape {q_features.shape} and k_features shape "
            f"{k_features.shape} differ in B, N or M. Pass features of the "
            "same batch, heads and feature dim."
        )
    if v.shape[:3] != k_features.shape[:3]:
        raise ValueError(
            f"v shape {v.shape} does not match [B, S, N] = {k_features.shape[:3]} "
            f"of k_features with shape {k_features.shape}. Pass one value per key."
        )
    if causal and q_length != k_length:
        raise ValueError(
            f"causal attention needs T == S, but q_features has T={q_length} and "
            f"k_features has S={k_length}. Pass causal=False or equal lengths."
        )


def _check_key_mask(key_mask: Array, k_shape: tuple[int, ...]) -> Array:
    key_mask = jnp.asarray(key_mask)
    if key_mask.shape != k_shape[:2]:
        raise ValueError(
            f"key_mask shape {key_mask.shape} does not match [B, S] = "
            f"{k_shape[:2]} of k_features. Pass one bool per key."
        )
    if key_mask.dtype != jnp.bool_:
        raise ValueError(
            f"key_mask dtype {key_mask.dtype} is not bool. Pass True for real "
            "keys and False for padding, for example segment_ids != 0."
        )
    return key_mask


def _check_rotation_inputs(
    q_features: Array,
    k_features: Array,
    q_positions: Array | None,
    k_positions: Array | None,
) -> None:
    if q_positions is None or k_positions is None:
        missing = [
            name
            for name, value in (
                ("q_positions", q_positions),
                ("k_positions", k_positions),
            )
            if value is None
        ]
        raise ValueError(
            f"rotate is set but {' and '.join(missing)} is missing (None). Pass "
            "[B, T] query and [B, S] key positions, or rotate=None."
        )
    num_features = q_features.shape[-1]
    if num_features % 2:
        raise ValueError(
            f"feature dim M={num_features} is odd, but RoPE rotates feature "
            "pairs. Use an even number of features with rotate."
        )
    for name, positions, features in (
        ("q_positions", q_positions, q_features),
        ("k_positions", k_positions, k_features),
    ):
        shape = jnp.shape(positions)
        if shape != features.shape[:2]:
            raise ValueError(
                f"{name} shape {shape} does not match [B, length] = "
                f"{features.shape[:2]} of features with shape {features.shape}. "
                "Pass one position per token."
            )


def _check_projection(projection: Array, head_dim: int, name: str) -> Array:
    projection = jnp.asarray(projection)
    if projection.ndim != 2 or projection.shape[1] != head_dim:
        raise ValueError(
            f"projection shape {projection.shape} is not [M, H] with the head "
            f"dim H={head_dim} of {name}. Draw it with "
            f"favor_projection(key, num_features, {head_dim})."
        )
    return projection.astype(jnp.float32)


def _check_rank4(name: str, x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} has shape {x.shape}, but linear attention expects "
            "[B, length, N, features]. Split the heads out of the feature axis."
        )


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is not an int. Pass a positive int.")
    if value < 1:
        raise ValueError(f"{name}={value} is not positive. Pass a positive int.")
