"""Tests for roformer_jax.attention.linear against float64 numpy references.

Tolerances are derived from unit roundoffs: U32 = 2**-24 for float32 and
U_BF16 = 2**-8 for bfloat16. A float32 sum of n products differs from the exact
sum by at most about ``(n + 2) * U32`` times the sum of their magnitudes, in any
summation order.
Every output of linear attention sums products ``(R q)_m (R k)_m v`` over at
most M features and S keys. By Cauchy-Schwarz the magnitudes are bounded by
``|q| |k| |v|``, and rotation keeps norms, so the error is bounded by
``(M + S + 2) * U32 * sum_s |q| |k_s| |v_s| / normaliser``, the "magnitude"
below. The normaliser's own rounding adds the same bound again. `apply_rotary`
moves a feature vector by at most ``4 * U32 * |position| + 8 * U32`` times its
norm, as tests/test_rotary.py derives, and this enters once for queries and
once for keys. `float32_bound` adds these terms and doubles the total to cover
second-order terms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from roformer_jax import rotary
from roformer_jax.attention import linear

U32 = 2.0**-24
U_BF16 = 2.0**-8
EPS = linear.DEFAULT_EPS
BASE = 10000.0


# --- float64 references -------------------------------------------------------


def reference_rotate(x, positions, layout):
    """Rotate feature pair i by ``position * BASE ** (-2i / M)``, in float64."""
    x = np.asarray(x, dtype=np.float64)
    num_features = x.shape[-1]
    if layout == "interleaved":
        first = np.arange(0, num_features, 2)
        second = first + 1
    else:
        first = np.arange(num_features // 2)
        second = first + num_features // 2
    frequencies = BASE ** (-np.arange(0, num_features, 2) / num_features)
    angles = np.asarray(positions, np.float64)[:, :, None, None] * frequencies
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = x.copy()
    rotated[..., first] = x[..., first] * cos - x[..., second] * sin
    rotated[..., second] = x[..., second] * cos + x[..., first] * sin
    return rotated


def reference_linear_attention(
    q_features,
    k_features,
    v,
    *,
    causal,
    key_mask=None,
    layout=None,
    q_positions=None,
    k_positions=None,
):
    """Compute the quadratic form directly in float64.

    Returns:
      (output, magnitude): ``[B, T, N, Hv]`` each. Magnitude is
      ``sum_s |q_t| |k_s| |v_s| / (normaliser + EPS)`` over visible keys.
    """
    q_plain = np.asarray(q_features, np.float64)
    k_plain = np.asarray(k_features, np.float64)
    values = np.asarray(v, np.float64)
    if key_mask is not None:
        keep = np.asarray(key_mask)[:, :, None, None]
        k_plain = np.where(keep, k_plain, 0.0)
        values = np.where(keep, values, 0.0)
    q_rotated, k_rotated = q_plain, k_plain
    if layout is not None:
        q_rotated = reference_rotate(q_plain, q_positions, layout)
        k_rotated = reference_rotate(k_plain, k_positions, layout)

    q_length, k_length = q_plain.shape[1], k_plain.shape[1]
    visible = np.ones((q_length, k_length))
    if causal:
        visible = np.tril(visible)
    scores = np.einsum("btnm,bsnm->bnts", q_rotated, k_rotated) * visible
    weights = np.einsum("btnm,bsnm->bnts", q_plain, k_plain) * visible
    normaliser = weights.sum(axis=-1).transpose(0, 2, 1)[..., None] + EPS
    output = np.einsum("bnts,bsnh->btnh", scores, values) / normaliser

    q_norms = np.linalg.norm(q_plain, axis=-1)
    k_norms = np.linalg.norm(k_plain, axis=-1)
    magnitude = np.einsum(
        "ts,btn,bsn,bsnh->btnh", visible, q_norms, k_norms, np.abs(values)
    )
    return output, magnitude / normaliser


def float32_bound(magnitude, *, num_terms, max_position=None):
    """Bound the float32 error of linear attention (module docstring)."""
    rotation = 0.0
    if max_position is not None:
        rotation = 4 * U32 * max_position + 8 * U32
    return 2 * (2 * rotation + 2 * (num_terms + 2) * U32) * magnitude


def reference_softmax_attention(q, k, v):
    """Compute exact softmax attention in float64 for ``[..., B, T, N, H]`` inputs."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("...tnh,...snh->...nts", q, k) / np.sqrt(q.shape[-1])
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("...nts,...snh->...tnh", weights, v)


# --- inputs -------------------------------------------------------------------


def random_normal(shape, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype(np.float32)


def arange_positions(batch, length, offsets):
    positions = np.arange(length)[None, :] + np.asarray(offsets)[:, None]
    return positions[:batch].astype(np.int32)


def make_features(kind, q_shape, k_shape, seed):
    """Build float32 query and key features from the module's feature maps."""
    if kind == "elu":
        q_features = linear.elu_feature_map(random_normal(q_shape, seed))
        k_features = linear.elu_feature_map(random_normal(k_shape, seed + 1))
        return np.asarray(q_features), np.asarray(k_features)
    head_dim = 8
    q = random_normal((*q_shape[:3], head_dim), seed, scale=0.5)
    k = random_normal((*k_shape[:3], head_dim), seed + 1, scale=0.5)
    projection = linear.favor_projection(jax.random.key(seed), q_shape[-1], head_dim)
    q_features, k_features = linear.favor_features(q, k, projection)
    return np.asarray(q_features), np.asarray(k_features)


def rotate_fn(layout):
    if layout is None:
        return None
    return functools.partial(rotary.apply_rotary, base=BASE, layout=layout)


def padding_mask(batch, length):
    """Mark the last third of batch element 1 as padding."""
    mask = np.ones((batch, length), dtype=bool)
    mask[1, length - length // 3 :] = False
    return mask


# --- causal and bidirectional attention against float64 --------------------------

NUM_FEATURES = 16
VALUE_DIM = 8

# (T, chunk_size, feature map, RoPE layout). Every T comes with a chunk that
# divides it and one that does not (for T = 1, one above T). Each feature map
# and RoPE setting meets a short and a long T. The full cross product would
# compile 28 scans, which is slow on CPU.
CAUSAL_CASES = [
    (1, 4, "elu", None),
    (1, 4, "favor", "interleaved"),
    (7, 3, "elu", None),
    (7, 3, "elu", "interleaved"),
    (7, 3, "favor", "interleaved"),
    (7, 7, "elu", "interleaved"),
    (128, 32, "elu", None),
    (128, 32, "favor", "interleaved"),
    (128, 48, "elu", "interleaved"),
    (512, 128, "elu", "interleaved"),
    (512, 96, "elu", None),
    (512, 96, "favor", "interleaved"),
]


@pytest.mark.parametrize(("length", "chunk_size", "kind", "layout"), CAUSAL_CASES)
def test_causal_matches_float64(length, chunk_size, kind, layout):
    batch, heads = 2, 2
    shape = (batch, length, heads, NUM_FEATURES)
    q_features, k_features = make_features(kind, shape, shape, seed=length)
    v = random_normal((batch, length, heads, VALUE_DIM), seed=3)
    positions = arange_positions(batch, length, [0, 5])
    key_mask = padding_mask(batch, length)
    position_args = {}
    if layout is not None:
        position_args = {"q_positions": positions, "k_positions": positions}

    expected, magnitude = reference_linear_attention(
        q_features,
        k_features,
        v,
        causal=True,
        key_mask=key_mask,
        layout=layout,
        **position_args,
    )
    max_position = None if layout is None else float(positions.max())
    bound = float32_bound(
        magnitude, num_terms=NUM_FEATURES + length, max_position=max_position
    )

    # jit compiles faster than op-by-op dispatch of the scan.
    attend = jax.jit(
        functools.partial(
            linear.linear_attention,
            causal=True,
            rotate=rotate_fn(layout),
            chunk_size=chunk_size,
        )
    )
    chunked = attend(q_features, k_features, v, key_mask=key_mask, **position_args)
    chunked_error = np.abs(np.asarray(chunked, np.float64) - expected)
    assert np.all(chunked_error <= bound), (
        f"chunked error {chunked_error.max():.3g} exceeds the float32 bound"
    )

    attend_quadratic = jax.jit(
        functools.partial(
            linear.quadratic_linear_attention, causal=True, rotate=rotate_fn(layout)
        )
    )
    quadratic = attend_quadratic(
        q_features, k_features, v, key_mask=key_mask, **position_args
    )
    quadratic_error = np.abs(np.asarray(quadratic, np.float64) - expected)
    assert np.all(quadratic_error <= bound), (
        f"quadratic error {quadratic_error.max():.3g} exceeds the float32 bound"
    )


@pytest.mark.parametrize("kind", ["elu", "favor"])
@pytest.mark.parametrize("layout", [None, "interleaved", "half"])
def test_bidirectional_matches_float64(layout, kind):
    batch, heads, q_length, k_length = 2, 3, 9, 13
    q_features, k_features = make_features(
        kind,
        (batch, q_length, heads, NUM_FEATURES),
        (batch, k_length, heads, NUM_FEATURES),
        seed=11,
    )
    v = random_normal((batch, k_length, heads, VALUE_DIM), seed=12)
    key_mask = padding_mask(batch, k_length)
    position_args = {}
    if layout is not None:
        position_args = {
            "q_positions": arange_positions(batch, q_length, [4, 30]),
            "k_positions": arange_positions(batch, k_length, [0, 26]),
        }

    expected, magnitude = reference_linear_attention(
        q_features,
        k_features,
        v,
        causal=False,
        key_mask=key_mask,
        layout=layout,
        **position_args,
    )
    max_position = None if layout is None else 26.0 + k_length
    bound = float32_bound(
        magnitude, num_terms=NUM_FEATURES + k_length, max_position=max_position
    )

    for attend in (linear.linear_attention, linear.quadratic_linear_attention):
        output = attend(
            q_features,
            k_features,
            v,
            causal=False,
            key_mask=key_mask,
            rotate=rotate_fn(layout),
            **position_args,
        )
        error = np.abs(np.asarray(output, np.float64) - expected)
        assert np.all(error <= bound), (
            f"{attend.__name__} error {error.max():.3g} exceeds the float32 bound"
        )


@pytest.mark.parametrize("causal", [False, True])
def test_padding_only_keys_give_zeros(causal):
    batch, length, heads = 2, 6, 2
    shape = (batch, length, heads, NUM_FEATURES)
    q_features, k_features = make_features("elu", shape, shape, seed=5)
    v = random_normal((batch, length, heads, VALUE_DIM), seed=6)
    v[1] = np.nan  # Padding may contain anything.
    key_mask = np.ones((batch, length), dtype=bool)
    key_mask[1] = False

    output = np.asarray(
        linear.linear_attention(
            q_features, k_features, v, causal=causal, key_mask=key_mask, chunk_size=4
        )
    )

    assert np.all(output[1] == 0.0), "queries without real keys must return zeros"
    assert np.all(np.isfinite(output[0])), "NaN in padding leaked into real rows"


def find_avals(jaxpr):
    """Yield the abstract value of every equation output, inner jaxprs included."""
    for equation in jaxpr.eqns:
        for variable in equation.outvars:
            yield variable.aval
        for param in equation.params.values():
            inner = param if isinstance(param, tuple | list) else (param,)
            for item in inner:
                if isinstance(item, jax_core.ClosedJaxpr):
                    yield from find_avals(item.jaxpr)
                elif isinstance(item, jax_core.Jaxpr):
                    yield from find_avals(item)


@pytest.mark.parametrize("causal", [False, True])
def test_memory_linear_in_length(causal):
    length, num_features, value_dim = 2048, 8, 4
    q_features = jnp.ones((1, length, 1, num_features))
    k_features = jnp.ones((1, length, 1, num_features))
    v = jnp.ones((1, length, 1, value_dim))
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]

    def attend(q_features, k_features, v):
        return linear.linear_attention(
            q_features,
            k_features,
            v,
            causal=causal,
            rotate=rotate_fn("interleaved"),
            q_positions=positions,
            k_positions=positions,
            chunk_size=64,
        )

    jaxpr = jax.make_jaxpr(attend)(q_features, k_features, v).jaxpr
    largest = max(aval.size for aval in find_avals(jaxpr) if hasattr(aval, "size"))

    # The inputs themselves have length * num_features entries. A T x S
    # matrix would have length**2 = 4M.
    assert largest <= length * num_features, f"largest intermediate has {largest}"


# --- RoPE's relative property -----------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_rope_scores_shift_invariant(causal):
    """Check that the numerator scores depend on positions only through m - n.

    With v the identity over keys, output[t, s] is score[t, s] / normaliser[t],
    and the normaliser does not depend on positions.
    """
    batch, length, heads, shift = 2, 6, 2, 1000
    shape = (batch, length, heads, NUM_FEATURES)
    q_features, k_features = make_features("elu", shape, shape, seed=21)
    identity = np.broadcast_to(
        np.eye(length, dtype=np.float32)[None, :, None, :],
        (batch, length, heads, length),
    )
    positions = arange_positions(batch, length, [0, 3])

    def attend(q_positions, k_positions):
        output = linear.linear_attention(
            q_features,
            k_features,
            identity,
            causal=causal,
            rotate=rotate_fn("interleaved"),
            q_positions=q_positions,
            k_positions=k_positions,
            chunk_size=4,
        )
        return np.asarray(output, np.float64)

    base_scores = attend(positions, positions)
    shifted_scores = attend(positions + shift, positions + shift)
    query_shifted_scores = attend(positions + 1, positions)

    _, magnitude = reference_linear_attention(
        q_features, k_features, identity, causal=causal
    )
    # Each output carries its own float32 error, so the bound is counted twice.
    max_position = float(positions.max() + shift)
    bound = 2 * float32_bound(
        magnitude, num_terms=NUM_FEATURES + length, max_position=max_position
    )
    shift_error = np.abs(shifted_scores - base_scores)
    assert np.all(shift_error <= bound), f"shift changed scores by {shift_error.max()}"
    query_shift_change = np.abs(query_shifted_scores - base_scores)
    assert np.any(query_shift_change > bound), "moving only queries must change scores"


# --- gradients, jit and dtypes ------------------------------------------------


def test_grad_finite_and_matches_quadratic():
    batch, length, heads, head_dim = 2, 10, 2, 8
    q = random_normal((batch, length, heads, head_dim), seed=31, scale=0.5)
    k = random_normal((batch, length, heads, head_dim), seed=32, scale=0.5)
    v = random_normal((batch, length, heads, VALUE_DIM), seed=33)
    cotangent = random_normal((batch, length, heads, VALUE_DIM), seed=34)
    positions = arange_positions(batch, length, [0, 7])
    key_mask = padding_mask(batch, length)
    projection = linear.favor_projection(jax.random.key(0), NUM_FEATURES, head_dim)

    def loss(q, k, v, attend, **kwargs):
        q_features, k_features = linear.favor_features(q, k, projection)
        output = attend(
            q_features,
            k_features,
            v,
            causal=True,
            key_mask=key_mask,
            rotate=rotate_fn("half"),
            q_positions=positions,
            k_positions=positions,
            **kwargs,
        )
        return jnp.sum(output * cotangent)

    chunked_loss = functools.partial(loss, attend=linear.linear_attention, chunk_size=4)
    quadratic_loss = functools.partial(loss, attend=linear.quadratic_linear_attention)
    chunked = jax.jit(jax.grad(chunked_loss, argnums=(0, 1, 2)))(q, k, v)
    quadratic = jax.jit(jax.grad(quadratic_loss, argnums=(0, 1, 2)))(q, k, v)

    # Both paths sum the same products in another order. Each gradient entry
    # sums a few hundred terms, so (M + Hv) * T * U32 is about 1.4e-5 of their
    # magnitudes. 1e-4 of the gradient norm is an estimate that allows for
    # some cancellation, not a proven bound.
    for name, chunked_grad, quadratic_grad in zip(
        ("q", "k", "v"), chunked, quadratic, strict=True
    ):
        assert np.all(np.isfinite(chunked_grad)), f"gradient of {name} is not finite"
        difference = np.linalg.norm(chunked_grad - quadratic_grad)
        scale = np.linalg.norm(quadratic_grad)
        assert difference <= 1e-4 * scale, (
            f"gradient of {name} differs by {difference:.3g} of norm {scale:.3g}"
        )


def test_jit_matches_float64():
    batch, length, heads = 2, 20, 2
    shape = (batch, length, heads, NUM_FEATURES)
    q_features, k_features = make_features("favor", shape, shape, seed=41)
    v = random_normal((batch, length, heads, VALUE_DIM), seed=42)
    positions = arange_positions(batch, length, [0, 9])

    attend = jax.jit(
        functools.partial(
            linear.linear_attention,
            causal=True,
            rotate=rotate_fn("interleaved"),
            chunk_size=8,
        )
    )
    output = attend(
        q_features, k_features, v, q_positions=positions, k_positions=positions
    )

    expected, magnitude = reference_linear_attention(
        q_features,
        k_features,
        v,
        causal=True,
        layout="interleaved",
        q_positions=positions,
        k_positions=positions,
    )
    bound = float32_bound(
        magnitude,
        num_terms=NUM_FEATURES + length,
        max_position=float(positions.max()),
    )
    error = np.abs(np.asarray(output, np.float64) - expected)
    assert np.all(error <= bound), f"jit error {error.max():.3g} exceeds the bound"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_output_dtype_is_value_dtype(causal, dtype):
    batch, length, heads = 2, 9, 2
    shape = (batch, length, heads, NUM_FEATURES)
    q_features, k_features = make_features("elu", shape, shape, seed=51)
    q_features = jnp.asarray(q_features, dtype)
    k_features = jnp.asarray(k_features, dtype)
    v = jnp.asarray(random_normal((batch, length, heads, VALUE_DIM), seed=52), dtype)
    positions = arange_positions(batch, length, [0, 2])
    position_args = {"q_positions": positions, "k_positions": positions}

    # The reference gets the same (rounded) inputs, so only the float32
    # internals and the final rounding to dtype differ.
    expected, magnitude = reference_linear_attention(
        np.asarray(q_features, np.float64),
        np.asarray(k_features, np.float64),
        np.asarray(v, np.float64),
        causal=causal,
        layout="interleaved",
        **position_args,
    )
    output_rounding = U_BF16 if dtype == jnp.bfloat16 else U32
    bound = float32_bound(
        magnitude, num_terms=NUM_FEATURES + length, max_position=float(length + 2)
    )
    bound = bound + output_rounding * magnitude

    for attend in (linear.linear_attention, linear.quadratic_linear_attention):
        kwargs = {"chunk_size": 4} if attend is linear.linear_attention else {}
        output = attend(
            q_features,
            k_features,
            v,
            causal=causal,
            rotate=rotate_fn("interleaved"),
            **position_args,
            **kwargs,
        )
        assert output.dtype == dtype, f"{attend.__name__} returned {output.dtype}"
        error = np.abs(np.asarray(output, np.float64) - expected)
        assert np.all(error <= bound), (
            f"{attend.__name__} error {error.max():.3g} exceeds the bound"
        )


# --- feature maps -------------------------------------------------------------


def test_elu_feature_map_values():
    x = np.array([-120.0, -50.0, -20.0, -1.0, 0.0, 0.5, 3.0], np.float32)
    x = np.broadcast_to(x, (1, 1, 1, 7))

    output = linear.elu_feature_map(x)
    features = np.asarray(output, np.float64)

    expected = np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0).astype(np.float64)))
    # Below -87.3 float32 exp gives subnormals or 0, so only x >= -50 is checked
    # against the relative bound of two float32 roundings.
    normal_range = x >= -50
    relative_error = np.abs(features - expected)[normal_range] / expected[normal_range]
    assert np.all(relative_error <= 2 * U32), f"relative error {relative_error.max()}"
    assert np.all(features[normal_range] > 0), "elu + 1 must be positive"
    assert output.dtype == jnp.float32
    assert linear.elu_feature_map(x.astype(jnp.bfloat16)).dtype == jnp.float32


def test_elu_feature_map_grad_finite():
    x = jnp.array([-200.0, -50.0, -1.0, 0.0, 1.0, 200.0]).reshape(1, 1, 1, 6)

    grad = np.asarray(jax.grad(lambda x: jnp.sum(linear.elu_feature_map(x)))(x))

    # d/dx (elu(x) + 1) is exp(x) for x <= 0 and 1 above. exp(-200) underflows
    # in float32, so values are compared from -50 up, within one rounding.
    x = np.asarray(x, np.float64)
    expected = np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))
    compared = x >= -50
    assert np.all(np.isfinite(grad)), f"elu gradient is not finite: {grad}"
    np.testing.assert_allclose(grad[compared], expected[compared], rtol=2 * U32)


# (M, H) shared by the projection tests, so the QR compiles once. 4104 = 256 * 16
# + 8 rows end with a partial block.
PROJECTION_SHAPE = (4104, 16)


def test_favor_projection_orthogonal_blocks():
    num_features, head_dim = PROJECTION_SHAPE
    projection = np.asarray(
        linear.favor_projection(jax.random.key(0), num_features, head_dim),
        np.float64,
    )
    assert projection.shape == (num_features, head_dim)

    directions = projection / np.linalg.norm(projection, axis=-1, keepdims=True)
    # Blocks of H rows, the last one cut to 8 rows. A float32 QR keeps
    # rows orthogonal to about H * U32, so 32 * H * U32 = 3e-5 is the bound.
    for start in range(0, num_features, head_dim):
        block = directions[start : start + head_dim]
        gram = block @ block.T
        off_diagonal = np.abs(gram - np.eye(len(block)))
        assert np.all(off_diagonal <= 32 * head_dim * U32), (
            f"block at row {start} is not orthogonal: {off_diagonal.max():.3g}"
        )
    # Independent blocks are not orthogonal to each other. A reused block
    # would give only dot products of 0 and 1.
    across_blocks = np.abs(
        directions[:head_dim] @ directions[head_dim : 2 * head_dim].T
    )
    independent = (across_blocks > 1e-3) & (across_blocks < 1 - 1e-3)
    assert np.any(independent), "the first two blocks are not independent"


def test_favor_projection_diagonal_signs_symmetric():
    """Check the QR sign fix through the signs of the block diagonals.

    A diagonal entry of a Haar-distributed orthogonal matrix is positive with
    probability 1/2. Householder QR without the fix sets these signs itself.
    """
    num_features, head_dim = PROJECTION_SHAPE
    projection = np.asarray(
        linear.favor_projection(jax.random.key(0), num_features, head_dim)
    )
    whole_blocks = num_features // head_dim
    blocks = projection[: whole_blocks * head_dim].reshape(
        whole_blocks, head_dim, head_dim
    )
    diagonals = np.diagonal(blocks, axis1=1, axis2=2)

    positive_fraction = np.mean(diagonals > 0)
    standard_error = 0.5 / np.sqrt(diagonals.size)
    assert abs(positive_fraction - 0.5) <= 4 * standard_error, positive_fraction


@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_projection_row_norms_gaussian(orthogonal):
    """Check that squared row norms follow chi-squared with H degrees of freedom."""
    num_features, head_dim = PROJECTION_SHAPE
    projection = np.asarray(
        linear.favor_projection(
            jax.random.key(1), num_features, head_dim, orthogonal=orthogonal
        ),
        np.float64,
    )
    squared_norms = np.sum(projection**2, axis=-1)

    # chi-squared(H) has mean H and variance 2H.
    standard_error = np.sqrt(2 * head_dim / num_features)
    assert abs(squared_norms.mean() - head_dim) <= 4 * standard_error
    # The sample variance has a relative standard error of about
    # sqrt((2 + 12 / H) / M) = 2.6% here, so 20% is about 8 standard errors.
    assert 0.8 * 2 * head_dim <= squared_norms.var() <= 1.2 * 2 * head_dim


def reference_favor_features(x, projection, *, is_query, stabilize):
    """Compute ``exp(W x - |x|^2 / 2 - c) / sqrt(M)`` in float64."""
    x = np.asarray(x, np.float64)
    projection = np.asarray(projection, np.float64)
    exponent = np.einsum("btnh,mh->btnm", x, projection)
    exponent -= 0.5 * np.sum(x**2, axis=-1, keepdims=True)
    if stabilize:
        axes = -1 if is_query else (1, 3)
        exponent -= exponent.max(axis=axes, keepdims=True)
    return np.exp(exponent) / np.sqrt(projection.shape[0])


@pytest.mark.parametrize("stabilize", [True, False])
@pytest.mark.parametrize("is_query", [True, False])
def test_favor_feature_map_matches_reference(is_query, stabilize):
    num_features, head_dim = 16, 8
    x = random_normal((2, 5, 3, head_dim), seed=61, scale=0.6)
    projection = linear.favor_projection(jax.random.key(2), num_features, head_dim)

    features = np.asarray(
        linear.favor_feature_map(x, projection, is_query=is_query, stabilize=stabilize),
        np.float64,
    )
    expected = reference_favor_features(
        x, projection, is_query=is_query, stabilize=stabilize
    )

    # The float32 exponent is within (H + 2) * U32 of the sum of its term
    # magnitudes. The stabiliser carries the same error again, and exp turns
    # an absolute exponent error into a relative error, plus 2 U32 for rounding.
    term_magnitudes = np.einsum(
        "btnh,mh->btnm", np.abs(x), np.abs(np.asarray(projection))
    ) + 0.5 * np.sum(np.asarray(x, np.float64) ** 2, axis=-1, keepdims=True)
    exponent_error = (head_dim + 2) * U32 * term_magnitudes.max()
    relative_bound = 2 * (2 * exponent_error + 2 * U32)
    relative_error = np.abs(features - expected) / expected
    assert features.shape == (2, 5, 3, num_features)
    assert np.all(relative_error <= relative_bound), f"error {relative_error.max()}"
    assert np.all(features > 0), "FAVOR+ features must be positive"


def test_favor_stabilizer_max_is_inverse_sqrt_m():
    num_features, head_dim = 16, 8
    q = random_normal((2, 7, 2, head_dim), seed=71, scale=2.0)
    k = random_normal((2, 7, 2, head_dim), seed=72, scale=2.0)
    projection = linear.favor_projection(jax.random.key(3), num_features, head_dim)

    q_features, k_features = linear.favor_features(q, k, projection)

    expected_max = 1.0 / np.sqrt(num_features)
    q_max = np.asarray(q_features).max(axis=-1)  # per query token
    k_max = np.asarray(k_features).max(axis=(1, 3))  # per batch element and head
    np.testing.assert_allclose(q_max, expected_max, rtol=2 * U32)
    np.testing.assert_allclose(k_max, expected_max, rtol=2 * U32)


@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_kernel_estimate_unbiased(orthogonal):
    """Check that the mean of phi(q) . phi(k) over draws is exp(q . k / sqrt(H))."""
    num_draws, num_features, head_dim = 4000, 8, 8
    q = random_normal((1, 1, 1, head_dim), seed=81, scale=0.5)
    k = q + random_normal((1, 1, 1, head_dim), seed=82, scale=0.3)

    def estimate(key):
        projection = linear.favor_projection(
            key, num_features, head_dim, orthogonal=orthogonal
        )
        q_features, k_features = linear.favor_features(
            q, k, projection, stabilize=False
        )
        return jnp.sum(q_features * k_features)

    keys = jax.random.split(jax.random.key(4), num_draws)
    estimates = np.asarray(jax.jit(jax.vmap(estimate))(keys), np.float64)

    exact = np.exp(np.sum(q.astype(np.float64) * k) / np.sqrt(head_dim))
    standard_error = estimates.std(ddof=1) / np.sqrt(num_draws)
    assert standard_error <= 0.05 * exact, "too few draws to test the mean"
    assert abs(estimates.mean() - exact) <= 4 * standard_error, (
        f"mean {estimates.mean():.4f} vs exact {exact:.4f}, SE {standard_error:.4f}"
    )


FAVOR_NUM_FEATURES = (16, 64, 256)


def favor_attention_errors(num_seeds):
    """Return the mean absolute error of FAVOR+ attention, per seed.

    Returns:
      dict from (M, orthogonal) to ``[num_seeds]`` errors against exact
      softmax attention in float64.
    """
    batch, length, heads, head_dim = 1, 24, 2, 16
    shape = (num_seeds, batch, length, heads, head_dim)
    q = random_normal(shape, seed=91, scale=0.4)
    k = random_normal(shape, seed=92, scale=0.4)
    v = random_normal(shape, seed=93)
    largest = max(FAVOR_NUM_FEATURES)

    def attend(key, q, k, v):
        # The first M rows of one projection are a projection of M rows. For
        # orthogonal rows and M a multiple of H they are whole blocks. One
        # compiled function then covers every M.
        outputs = []
        for orthogonal in (True, False):
            projection = linear.favor_projection(
                key, largest, head_dim, orthogonal=orthogonal
            )
            for num_features in FAVOR_NUM_FEATURES:
                q_features, k_features = linear.favor_features(
                    q, k, projection[:num_features]
                )
                outputs.append(
                    linear.linear_attention(q_features, k_features, v, causal=False)
                )
        return jnp.stack(outputs)

    keys = jax.random.split(jax.random.key(5), num_seeds)
    outputs = np.asarray(jax.jit(jax.vmap(attend))(keys, q, k, v), np.float64)
    exact = reference_softmax_attention(q, k, v)
    errors = np.abs(outputs - exact[:, None]).mean(axis=(2, 3, 4, 5))

    cases = [
        (num_features, orthogonal)
        for orthogonal in (True, False)
        for num_features in FAVOR_NUM_FEATURES
    ]
    return {case: errors[:, index] for index, case in enumerate(cases)}


def test_favor_approximates_softmax_attention():
    num_seeds = 20
    errors = favor_attention_errors(num_seeds)
    mean_error = {case: value.mean() for case, value in errors.items()}

    # Error proportional to 1 / sqrt(M) predicts a factor 4 from M = 16 to 256.
    # The means over these 20 seeds fall by 3.3 for orthogonal rows and 3.5 for
    # iid rows, each with a standard error near 5%, so the test requires 3.
    assert mean_error[64, True] < mean_error[16, True], mean_error
    assert mean_error[256, True] < mean_error[64, True], mean_error
    assert 3 * mean_error[256, True] <= mean_error[16, True], mean_error
    assert 3 * mean_error[256, False] <= mean_error[16, False], mean_error

    # Orthogonal rows must not be worse than iid rows, on paired seeds, beyond
    # two standard errors of the mean difference.
    for num_features in FAVOR_NUM_FEATURES:
        difference = errors[num_features, True] - errors[num_features, False]
        standard_error = difference.std(ddof=1) / np.sqrt(num_seeds)
        assert difference.mean() <= 2 * standard_error, (
            f"M={num_features}: orthogonal worse by {difference.mean():.4g}"
        )


# --- invalid input ------------------------------------------------------------


def _features(length=5, num_features=8, batch=2):
    return np.ones((batch, length, 2, num_features), np.float32)


_VALUES = np.ones((2, 5, 2, 4), np.float32)
_POSITIONS = arange_positions(2, 5, [0, 0])
_ROTATE = rotate_fn("interleaved")

INVALID_CASES = {
    "feature dims differ": (
        dict(q_features=_features(), k_features=_features(num_features=6)),
        "differ in B, N or M",
    ),
    "values per key": (
        dict(v=np.ones((2, 4, 2, 4), np.float32)),
        r"v shape \(2, 4, 2, 4\)",
    ),
    "causal lengths differ": (
        dict(q_features=_features(length=3)),
        "T=3",
    ),
    "rank 3 features": (
        dict(q_features=np.ones((2, 5, 8), np.float32)),
        r"q_features has shape \(2, 5, 8\)",
    ),
    "rotate without positions": (
        dict(rotate=_ROTATE, q_positions=_POSITIONS),
        "k_positions is missing",
    ),
    "odd feature dim": (
        dict(
            q_features=_features(num_features=7),
            k_features=_features(num_features=7),
            rotate=_ROTATE,
            q_positions=_POSITIONS,
            k_positions=_POSITIONS,
        ),
        "M=7",
    ),
    "positions shape": (
        dict(
            rotate=_ROTATE,
            q_positions=_POSITIONS[:, :4],
            k_positions=_POSITIONS,
        ),
        r"q_positions shape \(2, 4\)",
    ),
    "key mask shape": (
        dict(key_mask=np.ones((2, 4), bool)),
        r"key_mask shape \(2, 4\)",
    ),
    "key mask dtype": (
        dict(key_mask=np.ones((2, 5), np.int32)),
        "key_mask dtype int32",
    ),
}


@pytest.mark.parametrize(
    "attend", [linear.linear_attention, linear.quadratic_linear_attention]
)
@pytest.mark.parametrize("case", INVALID_CASES, ids=list(INVALID_CASES))
def test_invalid_input_raises(case, attend):
    overrides, message = INVALID_CASES[case]
    kwargs = dict(q_features=_features(), k_features=_features(), v=_VALUES)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        attend(causal=True, **kwargs)


def test_chunk_size_not_positive_raises():
    with pytest.raises(ValueError, match="chunk_size=0"):
        linear.linear_attention(
            _features(), _features(), _VALUES, causal=True, chunk_size=0
        )


def test_favor_invalid_shapes_raise():
    projection = linear.favor_projection(jax.random.key(0), 16, 8)
    q = np.ones((1, 3, 1, 6), np.float32)
    with pytest.raises(ValueError, match=r"projection shape \(16, 8\)"):
        linear.favor_feature_map(q, projection, is_query=True)
    with pytest.raises(ValueError, match="q head dim 6"):
        linear.favor_features(q, np.ones((1, 3, 1, 8), np.float32), projection)
    with pytest.raises(ValueError, match="num_features=0"):
        linear.favor_projection(jax.random.key(0), 0, 4)
