"""Tests for roformer_jax.rotary against an independent float64 numpy reference.

Tolerances are derived from unit roundoffs, the largest relative error of one
rounding to nearest: U32 = 2**-24 for float32 and U_BF16 = 2**-8 for bfloat16
(half of jnp.finfo(jnp.bfloat16).eps). Each test states its bound where it
uses it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from roformer_jax import rotary

U32 = 2.0**-24
U_BF16 = 2.0**-8
LAYOUTS = ("interleaved", "half")


# Reference: the d x d rotation matrix of RoFormer, in float64.


def reference_frequencies(rotary_dim, base):
    return base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def reference_pairs(rotary_dim, layout):
    """List the feature pairs (a, b) that rotate together, pair i first."""
    half = rotary_dim // 2
    if layout == "interleaved":
        return [(2 * i, 2 * i + 1) for i in range(half)]
    return [(i, i + half) for i in range(half)]


def reference_rotation_matrix(position, rotary_dim, base, layout):
    """Build R^d_{Theta,m}, with a 2 x 2 block [[cos, -sin], [sin, cos]] per pair.

    For the interleaved layout the blocks lie on the diagonal, which is RoFormer's
    block-diagonal matrix. For the half layout, pair i is features (i, i + d/2).
    """
    matrix = np.zeros((rotary_dim, rotary_dim))
    pairs = reference_pairs(rotary_dim, layout)
    for (a, b), theta in zip(
        pairs, reference_frequencies(rotary_dim, base), strict=True
    ):
        cos, sin = np.cos(position * theta), np.sin(position * theta)
        matrix[a, a] = cos
        matrix[a, b] = -sin
        matrix[b, a] = sin
        matrix[b, b] = cos
    return matrix


def reference_rotary(
    x, positions, *, base=10000.0, layout="interleaved", rotary_dim=None
):
    """Multiply each head vector by the rotation matrix of its token's position."""
    x = np.asarray(x, dtype=np.float64)
    positions = np.asarray(positions)
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    out = x.copy()
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            position = float(positions[b, t])
            matrix = reference_rotation_matrix(position, rotary_dim, base, layout)
            out[b, t, :, :rotary_dim] = x[b, t, :, :rotary_dim] @ matrix.T
    return out


def float32_rotation_atol(x, positions):
    """Bound the absolute error of apply_rotary on float32 x.

    The module docstring bounds the float32 angle error by
    2.4 * U32 * |position| radians. 4 * U32 leaves room for a pow that is not
    correctly rounded. A feature pair of norm r moves by at most r times the
    angle error. sin, cos and the rotation's multiplies and adds each round
    once more, which 8 * U32 * r covers.
    """
    max_pair_norm = math.sqrt(2) * float(np.abs(x).max())
    max_position = float(np.abs(positions).max())
    return max_pair_norm * (4 * U32 * max_position + 8 * U32)


def random_normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def arange_positions(batch, length, offsets=None):
    positions = np.broadcast_to(np.arange(length), (batch, length))
    if offsets is not None:
        positions = positions + np.asarray(offsets)[:, None]
    return np.asarray(positions, dtype=np.int32)


# Each case: shape [B, T, N, H], positions [B, T], rotary_dim, base.
REFERENCE_CASES = {
    "arange": ((2, 8, 3, 16), arange_positions(2, 8), None, 10000.0),
    "single_pair": ((1, 5, 1, 2), arange_positions(1, 5), None, 10000.0),
    "single_token": (
        (3, 1, 2, 8),
        np.array([[0], [7], [4095]], np.int32),
        None,
        10000.0,
    ),
    "decoding_offsets": (
        (3, 4, 2, 32),
        arange_positions(3, 4, [0, 37, 1000]),
        None,
        10000.0,
    ),
    "packed_documents": (
        (2, 8, 2, 16),
        np.array([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1]], np.int32),
        None,
        10000.0,
    ),
    "left_padded": (
        (2, 8, 2, 16),
        np.array([[0, 0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7]], np.int32),
        None,
        10000.0,
    ),
    "large_positions": (
        (2, 4, 2, 64),
        arange_positions(2, 4, [99_990, 65_530]),
        None,
        10000.0,
    ),
    "partial_rotary": ((2, 6, 2, 16), arange_positions(2, 6, [3, 500]), 8, 10000.0),
    "partial_rotary_pair": ((1, 6, 2, 8), arange_positions(1, 6), 2, 10000.0),
    "large_base": ((2, 6, 2, 32), arange_positions(2, 6, [0, 2000]), 16, 500000.0),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_apply_rotary_matches_reference(case, layout):
    shape, positions, rotary_dim, base = REFERENCE_CASES[case]
    x = random_normal(shape)

    out = rotary.apply_rotary(
        x, positions, base=base, layout=layout, rotary_dim=rotary_dim
    )
    expected = reference_rotary(
        x, positions, base=base, layout=layout, rotary_dim=rotary_dim
    )

    atol = float32_rotation_atol(x, positions)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_rotary_partial_passthrough(layout):
    x = random_normal((2, 6, 2, 16))
    positions = arange_positions(2, 6, [0, 100])

    out = rotary.apply_rotary(x, positions, layout=layout, rotary_dim=6)

    np.testing.assert_array_equal(np.asarray(out)[..., 6:], x[..., 6:])


def test_apply_rotary_position_zero_identity():
    x = random_normal((2, 3, 2, 8))

    out = rotary.apply_rotary(x, np.zeros((2, 3), np.int32))

    np.testing.assert_array_equal(np.asarray(out), x)


def test_layouts_differ():
    x = random_normal((1, 4, 1, 8))
    positions = arange_positions(1, 4, [1])

    interleaved = rotary.apply_rotary(x, positions, layout="interleaved")
    half = rotary.apply_rotary(x, positions, layout="half")

    assert not np.allclose(np.asarray(interleaved), np.asarray(half), atol=1e-3)


def test_apply_rotary_angles_matches_apply_rotary():
    x = random_normal((2, 5, 3, 16))
    positions = arange_positions(2, 5, [0, 9])

    angles = rotary.rotary_angles(positions, 8, base=1000.0)
    out = rotary.apply_rotary_angles(x, angles, layout="half")
    expected = rotary.apply_rotary(
        x, positions, base=1000.0, layout="half", rotary_dim=8
    )

    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("base", [10000.0, 1e6])
@pytest.mark.parametrize("rotary_dim", [64, 96])
def test_rotary_frequencies_values(rotary_dim, base):
    frequencies = rotary.rotary_frequencies(rotary_dim, base=base)

    # theta_i = base**-e is below 1. Rounding the power adds at most U32 * theta_i,
    # and rounding e (exact when rotary_dim is a power of two) adds at most
    # e * ln(base) * theta_i * U32 <= U32 / math.e. 2 * U32 leaves room for a pow
    # that is not correctly rounded.
    expected = reference_frequencies(rotary_dim, base)
    np.testing.assert_allclose(
        np.asarray(frequencies, np.float64), expected, rtol=0, atol=2 * U32
    )


def test_rotary_angles_values():
    positions = arange_positions(2, 3, [0, 70_000])

    angles = rotary.rotary_angles(positions, 16)

    # The module docstring bounds the angle error by 2.4 * U32 * |position|.
    expected = positions[..., None] * reference_frequencies(16, 10000.0)
    atol = 4 * U32 * float(positions.max())
    np.testing.assert_allclose(
        np.asarray(angles, np.float64), expected, rtol=0, atol=atol
    )


def test_rotary_angles_any_shape():
    positions = np.arange(5, dtype=np.int32)

    angles = rotary.rotary_angles(positions, 8)
    batched = rotary.rotary_angles(positions[None, :], 8)

    assert angles.shape == (5, 4)
    np.testing.assert_array_equal(np.asarray(angles), np.asarray(batched)[0])


# Properties.


def unit_heads(shape, seed):
    x = random_normal(shape, seed)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shift", [1, 1000, 65_536, 100_000])
def test_scores_shift_invariant(layout, shift):
    q = unit_heads((2, 8, 2, 64), seed=1)
    k = unit_heads((2, 8, 2, 64), seed=2)
    positions = arange_positions(2, 8, [0, 5])

    def scores(offset):
        q_rotated = rotary.apply_rotary(q, positions + offset, layout=layout)
        k_rotated = rotary.apply_rotary(k, positions + offset, layout=layout)
        q_rotated = np.asarray(q_rotated, np.float64)
        k_rotated = np.asarray(k_rotated, np.float64)
        return np.einsum("btnh,bsnh->bnts", q_rotated, k_rotated)

    # A score is sum_i |q_i| |k_i| cos(angle_q,i - angle_k,i), with unit q and k.
    # Shifting both positions by c leaves it unchanged for the float32 theta_i
    # too, so only the rounding of position * theta_i, at most U32 * |position|
    # radians per angle, breaks invariance. Moving the four angles (q and k,
    # shifted and not) moves the two scores by at most 4 * U32 * max|position|
    # in all, and the rotations' own roundings add a few U32.
    max_position = float(positions.max() + shift)
    atol = 4 * U32 * max_position + 16 * U32
    np.testing.assert_allclose(scores(shift), scores(0), rtol=0, atol=atol)


@pytest.mark.parametrize("rotary_dim", [None, 32])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_rotary_preserves_norm(layout, rotary_dim):
    x = random_normal((2, 16, 4, 64))
    positions = np.random.default_rng(3).integers(
        0, 100_000, size=(2, 16), dtype=np.int32
    )

    out = rotary.apply_rotary(x, positions, layout=layout, rotary_dim=rotary_dim)

    # sin**2 + cos**2 is 1 within a few U32 whatever the angle error, and each
    # output element rounds once more, so each pair keeps its norm within a few
    # U32 relative.
    norms = np.linalg.norm(np.asarray(out, np.float64), axis=-1)
    expected = np.linalg.norm(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(norms, expected, rtol=8 * U32)


# Layout conversion of weights.

D, N, H = 32, 4, 16
LAYOUT_PAIRS = [("interleaved", "half"), ("half", "interleaved")]


def projection_weights(seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(D, N * H)).astype(np.float32) / math.sqrt(D)
    bias = rng.normal(size=(N * H,)).astype(np.float32)
    return kernel, bias


def project(h, kernel, bias):
    # [B, T, D] -> [B, T, N * H] -> [B, T, N, H]
    features = jnp.asarray(h) @ kernel + bias
    return features.reshape(*h.shape[:2], N, H)


def attention_scores(h, positions, q_weights, k_weights, layout, rotary_dim):
    apply = functools.partial(
        rotary.apply_rotary, positions=positions, layout=layout, rotary_dim=rotary_dim
    )
    q = np.asarray(apply(project(h, *q_weights)), np.float64)
    k = np.asarray(apply(project(h, *k_weights)), np.float64)
    return np.einsum("btnh,bsnh->bnts", q, k)


def convert(weights, from_layout, to_layout, rotary_dim):
    permute = functools.partial(
        rotary.permute_qk_weights,
        num_heads=N,
        head_dim=H,
        from_layout=from_layout,
        to_layout=to_layout,
        rotary_dim=rotary_dim,
    )
    return tuple(permute(array) for array in weights)


@pytest.mark.parametrize("rotary_dim", [None, 8])
@pytest.mark.parametrize(("from_layout", "to_layout"), LAYOUT_PAIRS)
def test_permute_qk_weights_keeps_scores(from_layout, to_layout, rotary_dim):
    h = random_normal((2, 6, D), seed=4)
    positions = arange_positions(2, 6, [0, 300])
    q_weights, k_weights = projection_weights(5), projection_weights(6)

    original = attention_scores(
        h, positions, q_weights, k_weights, from_layout, rotary_dim
    )
    converted = attention_scores(
        h,
        positions,
        convert(q_weights, from_layout, to_layout, rotary_dim),
        convert(k_weights, from_layout, to_layout, rotary_dim),
        to_layout,
        rotary_dim,
    )

    # On CPU the converted q and k are exact permutations of the originals, so
    # only the float64 sum order differs. The tolerance also allows XLA to sum
    # h @ kernel in another order per column, a few U32 of each feature.
    atol = 64 * U32 * float(np.abs(original).max())
    np.testing.assert_allclose(converted, original, rtol=0, atol=atol)


@pytest.mark.parametrize(("from_layout", "to_layout"), LAYOUT_PAIRS)
def test_permute_qk_weights_rotary_values(from_layout, to_layout):
    h = random_normal((2, 6, D), seed=7)
    positions = arange_positions(2, 6, [0, 40])
    weights = [projection_weights(seed) for seed in (8, 9, 10)]
    output_kernel = random_normal((N * H, D), seed=11)

    def attention_output(q_weights, k_weights, v_weights, output_kernel, layout):
        apply = functools.partial(
            rotary.apply_rotary, positions=positions, layout=layout
        )
        q = apply(project(h, *q_weights))
        k = apply(project(h, *k_weights))
        v = apply(project(h, *v_weights))
        probs = jax.nn.softmax(jnp.einsum("btnh,bsnh->bnts", q, k), axis=-1)
        heads = jnp.einsum("bnts,bsnh->btnh", probs, v).reshape(2, 6, N * H)
        return np.asarray(heads @ output_kernel)

    original = attention_output(*weights, output_kernel, from_layout)
    converted_weights = [convert(w, from_layout, to_layout, None) for w in weights]
    converted_output = convert((output_kernel.T,), from_layout, to_layout, None)[0].T
    converted = attention_output(*converted_weights, converted_output, to_layout)

    # Same products summed in another order, as in the scores test.
    atol = 64 * U32 * float(np.abs(original).max())
    np.testing.assert_allclose(converted, original, rtol=0, atol=atol)


@pytest.mark.parametrize("rotary_dim", [None, 6])
@pytest.mark.parametrize(("from_layout", "to_layout"), LAYOUT_PAIRS)
def test_layout_permutation_inverse(from_layout, to_layout, rotary_dim):
    forward = rotary.layout_permutation(10, from_layout, to_layout, rotary_dim)
    backward = rotary.layout_permutation(10, to_layout, from_layout, rotary_dim)

    np.testing.assert_array_equal(forward[backward], np.arange(10))


def test_layout_permutation_values():
    to_half = rotary.layout_permutation(8, "interleaved", "half", rotary_dim=6)
    to_interleaved = rotary.layout_permutation(8, "half", "interleaved", rotary_dim=6)
    same = rotary.layout_permutation(8, "half", "half")

    np.testing.assert_array_equal(to_half, [0, 2, 4, 1, 3, 5, 6, 7])
    np.testing.assert_array_equal(to_interleaved, [0, 3, 1, 4, 2, 5, 6, 7])
    np.testing.assert_array_equal(same, np.arange(8))


# Half feature i takes interleaved feature 2i, and feature i + H/2 takes 2i + 1.
INTERLEAVED_TO_HALF = [a for a, _ in reference_pairs(H, "interleaved")] + [
    b for _, b in reference_pairs(H, "interleaved")
]
KERNEL = random_normal((D, N * H), seed=12)
KERNEL_CONVERTED = KERNEL.reshape(D, N, H)[..., INTERLEAVED_TO_HALF]  # [D, N, H]
WEIGHT_SHAPES = {
    "kernel": (KERNEL, KERNEL_CONVERTED.reshape(D, N * H)),
    "kernel_heads": (KERNEL.reshape(D, N, H), KERNEL_CONVERTED),
    "bias": (KERNEL[0], KERNEL_CONVERTED[0].reshape(N * H)),
    "bias_heads": (KERNEL[0].reshape(N, H), KERNEL_CONVERTED[0]),
}


@pytest.mark.parametrize("case", WEIGHT_SHAPES, ids=str)
def test_permute_qk_weights_shapes(case):
    array, expected = WEIGHT_SHAPES[case]

    out = rotary.permute_qk_weights(
        array, num_heads=N, head_dim=H, from_layout="interleaved", to_layout="half"
    )

    np.testing.assert_array_equal(out, expected)


def test_permute_qk_weights_array_type():
    kernel = random_normal((D, N * H))
    kwargs = dict(num_heads=N, head_dim=H, from_layout="half", to_layout="interleaved")

    numpy_out = rotary.permute_qk_weights(kernel, **kwargs)
    jax_out = rotary.permute_qk_weights(jnp.asarray(kernel), **kwargs)

    assert isinstance(numpy_out, np.ndarray)
    assert isinstance(jax_out, jax.Array)
    np.testing.assert_array_equal(np.asarray(jax_out), numpy_out)


# Dtypes and jit.


def primitive_output_dtypes(jaxpr, primitive_name):
    """List the output dtypes of every primitive_name equation, sub-jaxprs included."""
    dtypes = [
        var.aval.dtype
        for eqn in jaxpr.eqns
        if eqn.primitive.name == primitive_name
        for var in eqn.outvars
    ]
    for subjaxpr in jax_core.subjaxprs(jaxpr):
        dtypes += primitive_output_dtypes(subjaxpr, primitive_name)
    return dtypes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_rotary_bf16_rounding(layout):
    x = jnp.asarray(random_normal((2, 16, 4, 64)), jnp.bfloat16)
    positions = np.random.default_rng(13).integers(
        0, 65_536, size=(2, 16), dtype=np.int32
    )
    positions[0, -1] = 65_536

    out = rotary.apply_rotary(x, positions, layout=layout)
    expected = rotary.apply_rotary(x.astype(jnp.float32), positions, layout=layout)

    # The bfloat16 path runs the same float32 computation on the same input and
    # rounds once, an error of at most U_BF16 relative. atol allows for XLA
    # fusing the two float32 computations differently, a few U32 of |x|.
    assert out.dtype == jnp.bfloat16
    atol = 16 * U32 * float(jnp.abs(x).max())
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(expected), rtol=U_BF16, atol=atol
    )


def test_apply_rotary_bf16_sin_cos_float32():
    x = jnp.zeros((1, 4, 2, 8), jnp.bfloat16)
    positions = arange_positions(1, 4)

    jaxpr = jax.make_jaxpr(rotary.apply_rotary)(x, positions).jaxpr
    sin_dtypes = primitive_output_dtypes(jaxpr, "sin")
    cos_dtypes = primitive_output_dtypes(jaxpr, "cos")

    assert sin_dtypes
    assert cos_dtypes
    assert all(dtype == jnp.float32 for dtype in sin_dtypes)
    assert all(dtype == jnp.float32 for dtype in cos_dtypes)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_apply_rotary_output_dtype(dtype):
    x = jnp.ones((1, 3, 2, 8), dtype)

    out = rotary.apply_rotary(x, arange_positions(1, 3), rotary_dim=4)

    assert out.dtype == dtype
    assert out.shape == x.shape


def test_frequencies_angles_float32_x64():
    with jax.enable_x64(True):
        frequencies = rotary.rotary_frequencies(16)
        angles = rotary.rotary_angles(np.arange(6, dtype=np.int64).reshape(2, 3), 16)
        out = rotary.apply_rotary(np.ones((2, 3, 1, 16)), np.zeros((2, 3), np.int64))

    assert frequencies.dtype == jnp.float32
    assert angles.dtype == jnp.float32
    assert out.dtype == jnp.float64


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_rotary_jit(layout):
    x = random_normal((2, 5, 3, 16))
    positions = arange_positions(2, 5, [0, 20])
    jitted = jax.jit(rotary.apply_rotary, static_argnames=("layout", "rotary_dim"))

    out = jitted(x, positions, base=jnp.float32(500.0), layout=layout, rotary_dim=12)
    expected = rotary.apply_rotary(
        x, positions, base=500.0, layout=layout, rotary_dim=12
    )

    # A traced base and XLA's fusion may change a few roundings per element.
    atol = 16 * U32 * float(np.abs(x).max())
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=0, atol=atol)


# Errors.

X = np.zeros((2, 3, 4, 8), np.float32)
POSITIONS = arange_positions(2, 3)
PERMUTE_KWARGS = dict(
    num_heads=2, head_dim=4, from_layout="interleaved", to_layout="half"
)

ERROR_CASES = {
    "rotary_dim_odd": (
        lambda: rotary.apply_rotary(X, POSITIONS, rotary_dim=5),
        r"rotary_dim=5 is odd",
    ),
    "head_dim_odd": (
        lambda: rotary.apply_rotary(np.zeros((2, 3, 4, 7), np.float32), POSITIONS),
        r"H=7 is odd",
    ),
    "rotary_dim_too_large": (
        lambda: rotary.apply_rotary(X, POSITIONS, rotary_dim=10),
        r"rotary_dim=10 exceeds the head dim H=8",
    ),
    "rotary_dim_zero": (
        lambda: rotary.apply_rotary(X, POSITIONS, rotary_dim=0),
        r"rotary_dim=0 is not positive",
    ),
    "rotary_dim_negative": (
        lambda: rotary.apply_rotary(X, POSITIONS, rotary_dim=-2),
        r"rotary_dim=-2 is not positive",
    ),
    "positions_shape": (
        lambda: rotary.apply_rotary(X, np.zeros((2, 5), np.int32)),
        r"positions shape \(2, 5\) does not match \(2, 3\)",
    ),
    "layout_unknown": (
        lambda: rotary.apply_rotary(X, POSITIONS, layout="rotate_half"),
        r"'rotate_half'.*\('interleaved', 'half'\)",
    ),
    "positions_float": (
        lambda: rotary.apply_rotary(X, POSITIONS.astype(np.float32)),
        r"positions dtype float32 is not an integer dtype",
    ),
    "positions_float_jit": (
        lambda: jax.jit(rotary.apply_rotary)(X, POSITIONS.astype(np.float32)),
        r"positions dtype float32",
    ),
    "x_rank": (
        lambda: rotary.apply_rotary(np.zeros((2, 3, 8), np.float32), POSITIONS),
        r"x has shape \(2, 3, 8\)",
    ),
    "x_integer": (
        lambda: rotary.apply_rotary(X.astype(np.int32), POSITIONS),
        r"x dtype int32",
    ),
    "frequencies_odd": (
        lambda: rotary.rotary_frequencies(5),
        r"rotary_dim=5 is odd",
    ),
    "frequencies_base": (
        lambda: rotary.rotary_frequencies(8, base=0.0),
        r"base=0.0 is not positive",
    ),
    "angles_float_positions": (
        lambda: rotary.rotary_angles(np.ones((2, 3), np.float32), 8),
        r"positions dtype float32",
    ),
    "angles_shape": (
        lambda: rotary.apply_rotary_angles(X, np.zeros((2, 4, 4), np.float32)),
        r"angles shape \(2, 4, 4\)",
    ),
    "angles_too_wide": (
        lambda: rotary.apply_rotary_angles(X, np.zeros((2, 3, 5), np.float32)),
        r"rotary_dim=10 exceeds the head dim H=8",
    ),
    "permutation_layout": (
        lambda: rotary.layout_permutation(8, "interleaved", "halves"),
        r"'halves'",
    ),
    "kernel_shape": (
        lambda: rotary.permute_qk_weights(np.zeros((4, 10)), **PERMUTE_KWARGS),
        r"kernel shape \(4, 10\)",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=str)
def test_invalid_input_raises(case):
    call, message = ERROR_CASES[case]

    with pytest.raises(ValueError, match=message):
        call()


def test_rotary_dim_float_raises():
    with pytest.raises(TypeError, match=r"rotary_dim=8.0 is not an int"):
        rotary.rotary_frequencies(8.0)
