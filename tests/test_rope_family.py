"""Tests of the RoPE family: the rescalings, `rope`, `rope_learned`, `rope_2d`
and `xpos`, and RoFormer's long-term decay bound.

Reference numbers are the published formulas evaluated in float64 with numpy,
outside the package, and written here as literals. Each comment gives the
formula and the inputs. Tolerances are in units of U32 = 2**-24, the float32
unit roundoff, and U_BF16 = 2**-8, and each test states its bound where it
uses it.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from jax.sharding import PartitionSpec

from configs import tiny_shakespeare
from roformer_jax import positions, rope_scaling, rotary
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.positions import rope as rope_lib
from roformer_jax.positions import xpos as xpos_lib
from roformer_jax.train import mesh as mesh_lib

U32 = 2.0**-24
U_BF16 = 2.0**-8
TWO_PI = 2 * math.pi

# Frequencies: each rescaled theta computes in a few float32 steps. The power
# base' ** -e has a relative error of at most (1 + e * ln(base')) * U32, below
# 16 * U32 for every base' here (ln(5.4e6) < 16). A rescaled base adds e times
# its own relative error of a few U32, and the division, the ramp and the blend
# add a few U32 more. 32 * U32 covers the sum.
FREQUENCY_RTOL = 32 * U32


def theta(rotary_dim, base):
    return rotary.rotary_frequencies(rotary_dim, base)


# Each case: the package's float32 frequencies and the float64 literals.
FREQUENCY_CASES = {
    # theta_i / s with theta_i = 1e4 ** (-2i/8), s = 4.
    "linear_d8": (
        lambda: rope_scaling.linear_frequencies(theta(8, 1e4), 4.0),
        [0.25, 0.025, 0.0025, 0.00025],
    ),
    # theta_i / s with theta_i = 5e5 ** (-2i/16), s = 8.
    "linear_d16": (
        lambda: rope_scaling.linear_frequencies(theta(16, 5e5), 8.0),
        [
            0.125,
            0.02424034309358572,
            0.004700753866357992,
            0.0009115830921521387,
            0.00017677669529663688,
            3.428102195952591e-05,
            6.647869871181235e-06,
            1.2891731721515574e-06,
        ],
    ),
    # base' ** (-2i/8) with base' = 1e4 * 4 ** (8/6).
    "ntk_d8": (
        lambda: theta(8, rope_scaling.ntk_base(1e4, 4.0, 8)),
        [1.0, 0.06299605249474366, 0.003968502629920499, 0.00025],
    ),
    # base' ** (-2i/16) with base' = 5e5 * 8 ** (16/14).
    "ntk_d16": (
        lambda: theta(16, rope_scaling.ntk_base(5e5, 8.0, 16)),
        [
            1.0,
            0.14408404561515462,
            0.020760212200829953,
            0.0029912153617246725,
            0.0004309864106234889,
            6.209826564778652e-05,
            8.947369340217663e-06,
            1.2891731721515574e-06,
        ],
    ),
    # base' = 1e4 * (s * L / L0 - (s - 1)) ** (d / (d - 2)), d = 8, s = 2,
    # L0 = 16, L = 40, so base' = 1e4 * 4 ** (4/3).
    "dynamic_ntk_d8": (
        lambda: theta(8, rope_scaling.dynamic_ntk_base(1e4, 2.0, 8, 16, 40)),
        [1.0, 0.06299605249474366, 0.003968502629920499, 0.00025],
    ),
    # The same with d = 16, s = 4, L0 = 64, L = 100: base' = 1e4 * 3.25 ** (8/7).
    "dynamic_ntk_d16": (
        lambda: theta(16, rope_scaling.dynamic_ntk_base(1e4, 4.0, 16, 64, 100)),
        [
            1.0,
            0.2672229816928558,
            0.07140812194482034,
            0.01908189126318194,
            0.0050991198796863325,
            0.0013626020182590979,
            0.0003641185741798993,
            9.730085108210398e-05,
        ],
    ),
    # YaRN: r_i = L0 / (2 pi / theta_i), gamma = clip((r - 1) / (32 - 1), 0, 1),
    # theta' = (1 - gamma) theta / s + gamma theta; d = 16, base 1e4, s = 8,
    # L0 = 2048. gamma is 1 for pairs 0-2, 0.300, 0.0729 and 0.000992 for
    # pairs 3-5, and 0 for pairs 6-7.
    "yarn_d16": (
        lambda: rope_scaling.yarn_frequencies(theta(16, 1e4), 8.0, 2048, 32.0, 1.0),
        [
            1.0,
            0.31622776601683794,
            0.1,
            0.012260451220184768,
            0.0018877601871634725,
            0.0003980286955068356,
            0.000125,
            3.952847075210474e-05,
        ],
    ),
    # The same with d = 8, s = 4, L0 = 64: gamma = 0.296, 0.000600, 0, 0.
    "yarn_d8": (
        lambda: rope_scaling.yarn_frequencies(theta(8, 1e4), 4.0, 64, 32.0, 1.0),
        [0.47223991188422504, 0.025044979764003543, 0.0025, 0.00025],
    ),
    # Llama 3.1: wavelength w = 2 pi / theta; w < L0 / 4 keeps theta, w > L0 / 1
    # divides it by s, else g = (L0 / w - 1) / (4 - 1) blends
    # (1 - g) theta / s + g theta. d = 16, base 5e5, s = 8, L0 = 8192: pairs
    # 0-3 keep theta, pair 4 (w = 4443) blends, pairs 5-7 divide.
    "llama3_d16": (
        lambda: rope_scaling.llama3_frequencies(theta(16, 5e5), 8.0, 8192, 1.0, 4.0),
        [
            1.0,
            0.19392274474868576,
            0.03760603093086393,
            0.007292664737217109,
            0.0005248461609929547,
            3.428102195952591e-05,
            6.647869871181235e-06,
            1.2891731721515574e-06,
        ],
    ),
    # The same with d = 8, base 1e4, s = 4, L0 = 64: pair 1 (w = 62.8) blends.
    "llama3_d8": (
        lambda: rope_scaling.llama3_frequencies(theta(8, 1e4), 4.0, 64, 1.0, 4.0),
        [1.0, 0.025464790894703257, 0.0025, 0.00025],
    ),
    # Band edges, s = 8, L0 = 8192: w = L0 / 4 = 2048 keeps theta = 2 pi / 2048,
    # w = L0 / 1 = 8192 divides 2 pi / 8192 by 8, and w = L0 / 2.5 blends with
    # g = 0.5.
    "llama3_band_edges": (
        lambda: rope_scaling.llama3_frequencies(
            np.array([TWO_PI / 2048, TWO_PI / 8192, TWO_PI / (8192 / 2.5)]),
            8.0,
            8192,
            1.0,
            4.0,
        ),
        [0.0030679615757712823, 9.587379924285257e-05, 0.0010785802414820915],
    ),
}


@pytest.mark.parametrize("case", FREQUENCY_CASES, ids=str)
def test_scaled_frequencies_values(case):
    compute, expected = FREQUENCY_CASES[case]

    frequencies = compute()

    assert frequencies.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(frequencies, np.float64), expected, rtol=FREQUENCY_RTOL, atol=0
    )


def test_ntk_base_value():
    # 1e4 * 4 ** (8 / 6), in float64.
    base = rope_scaling.ntk_base(1e4, 4.0, 8)

    np.testing.assert_allclose(float(base), 63496.04207872797, rtol=4 * U32)


@pytest.mark.parametrize("length", [1, 10, 16])
def test_dynamic_ntk_base_unchanged_up_to_l0(length):
    base = rope_scaling.dynamic_ntk_base(1e4, 2.0, 8, 16, length)

    assert float(base) == 1e4


def test_dynamic_ntk_base_jit():
    jitted = jax.jit(rope_scaling.dynamic_ntk_base, static_argnums=(2, 3))

    base = jitted(1e4, 2.0, 8, 16, jnp.int32(40))

    # 1e4 * (2 * 40 / 16 - 1) ** (8 / 6), in float64.
    np.testing.assert_allclose(float(base), 63496.04207872797, rtol=8 * U32)


def test_sequence_length_max_plus_one():
    length = rope_scaling.sequence_length(np.array([[0, 1, 2], [7, 3, 0]]))

    assert int(length) == 8


# sqrt(1/t) = 0.1 ln(s) + 1 and 1/t = (0.1 ln(s) + 1) ** 2, in float64.
YARN_TEMPERATURES = {
    1.0: (1.0, 1.0),
    4.0: (1.138629436111989, 1.2964769927807063),
    8.0: (1.2079441541679836, 1.4591290795886054),
    16.0: (1.2772588722239782, 1.6313902266748685),
    32.0: (1.3465735902799727, 1.8132604340394958),
}


@pytest.mark.parametrize("factor", YARN_TEMPERATURES)
def test_yarn_attention_scale_values(factor):
    scale_expected, inverse_temperature = YARN_TEMPERATURES[factor]

    scale = rope_scaling.yarn_attention_scale(factor)

    # The scale is a Python float computed in float64.
    assert scale == pytest.approx(scale_expected, rel=1e-15)
    assert scale**2 == pytest.approx(inverse_temperature, rel=1e-15)


# Scores through the encodings. With q = k = ones in a head of d = 8 features,
# a query at m and a key at n give q . k = sum_i 2 * c_i * cos((m - n) * theta_i),
# where c_i is 1 for RoPE, (0.1 ln(s) + 1) ** 2 for YaRN and
# zeta_i ** ((m - n) / scale_base) for xPos.


def head_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=50, hidden_size=8, num_layers=1, num_heads=1, mlp_dim=16)
    values.update(overrides)
    return ModelConfig(**values)


def run_transform(config, q, k, q_positions, k_positions, v=None, params=None):
    """Run the encoding's transform, returning its outputs and its variables."""
    encoding = positions.get(config.position_encoding)(config)
    v = k if v is None else v
    args = (q, k, v, jnp.asarray(q_positions), jnp.asarray(k_positions))
    if params is None:
        outputs, variables = encoding.init_with_output(
            jax.random.PRNGKey(0), *args, method="transform"
        )
        return outputs, nn.meta.unbox(variables)
    return encoding.apply({"params": params}, *args, method="transform"), {
        "params": params
    }


def ones_score(config, m, n):
    ones = jnp.ones((1, 1, 1, 8), jnp.float32)
    (q, k, _, bias), _ = run_transform(config, ones, ones, [[m]], [[n]])
    assert bias is None
    return float(jnp.sum(q.astype(jnp.float32) * k.astype(jnp.float32)))


# Each case: config overrides, query position m, key position n, float64 score.
SCORE_CASES = {
    # sum_i 2 cos(100 theta_i), theta_i = 1e4 ** (-2i/8).
    "rope": (dict(), 150, 50, 3.117107628714794),
    # theta_i / 4.
    "linear": (
        dict(rope_scaling="linear", rope_scaling_factor=4.0),
        150,
        50,
        4.317318268605774,
    ),
    # base' = 1e4 * 4 ** (8/6).
    "ntk": (
        dict(rope_scaling="ntk", rope_scaling_factor=4.0),
        150,
        50,
        7.56830914566353,
    ),
    # YaRN frequencies of "yarn_d8" above, times (0.1 ln 4 + 1) ** 2.
    "yarn": (
        dict(rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_max_length=64),
        150,
        50,
        0.4402277957442591,
    ),
    # Llama 3.1 frequencies of "llama3_d8" above.
    "llama3": (
        dict(
            rope_scaling="llama3", rope_scaling_factor=4.0, rope_original_max_length=64
        ),
        150,
        50,
        4.0056679409154,
    ),
    # The key at 39 sets L = 40 > L0 = 16: base' = 1e4 * 4 ** (4/3), m - n = 39.
    "dynamic_ntk": (
        dict(
            rope_scaling="dynamic_ntk",
            rope_scaling_factor=2.0,
            rope_original_max_length=16,
        ),
        78,
        39,
        2.9601256578441975,
    ),
    # sum_i 2 zeta_i ** (100/512) cos(100 theta_i), zeta_i = (2i/8 + 0.4) / 1.4.
    "xpos": (dict(position_encoding="xpos"), 150, 50, 2.811978180216821),
    # The key after the query, m - n = -100: zeta_i ** (-100/512) amplifies.
    "xpos_key_after_query": (
        dict(position_encoding="xpos"),
        50,
        150,
        3.499238959724517,
    ),
    # Grid 16 wide: 87 = (5, 7) and 35 = (2, 3), so rows differ by 3 and columns
    # by 4. sum over theta' = 1e4 ** (-2i/4), i < 2, of 2 cos(3 theta') + 2 cos(4 theta').
    "rope_2d": (dict(position_encoding="rope_2d"), 87, 35, 0.7102280458918162),
    # Learned frequencies at initialisation equal RoPE's.
    "rope_learned": (
        dict(position_encoding="rope_learned"),
        150,
        50,
        3.117107628714794,
    ),
}


@pytest.mark.parametrize("case", SCORE_CASES, ids=str)
def test_encoding_score_values(case):
    overrides, m, n, expected = SCORE_CASES[case]

    score = ones_score(head_config(**overrides), m, n)

    # Angles up to 150 * theta carry the rounding of the product and a
    # frequency error of FREQUENCY_RTOL, so at most 40 * U32 * 150 radians.
    # Each of the 4 pair terms 2 c_i cos(.) then moves by at most
    # 2 c_i * (angle error + 8 * U32), with c_i < 1.5.
    atol = 4 * 2 * 1.5 * (40 * U32 * 150 + 8 * U32)
    assert score == pytest.approx(expected, abs=atol)


# Dynamic NTK in the `rope` encoding.


def random_normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_dynamic_ntk_equals_rope_below_l0():
    q = random_normal((2, 8, 2, 8), seed=1)
    k = random_normal((2, 8, 2, 8), seed=2)
    key_positions = np.array([np.arange(8), np.arange(56, 64)], np.int32)
    dynamic = head_config(
        num_heads=2,
        hidden_size=16,
        rope_scaling="dynamic_ntk",
        rope_scaling_factor=4.0,
        rope_original_max_length=64,
    )
    plain = head_config(num_heads=2, hidden_size=16)

    (q_dynamic, k_dynamic, _, _), _ = run_transform(
        dynamic, q, k, key_positions, key_positions
    )
    (q_plain, k_plain, _, _), _ = run_transform(
        plain, q, k, key_positions, key_positions
    )

    # L = 64 <= L0, so the base is 1e4 and the frequencies are the same float32
    # numbers. Only a different fusion could change a rounding, a few U32 of |x|.
    atol = 8 * U32 * float(np.abs(q).max())
    np.testing.assert_allclose(np.asarray(q_dynamic), np.asarray(q_plain), atol=atol)
    np.testing.assert_allclose(np.asarray(k_dynamic), np.asarray(k_plain), atol=atol)


def test_dynamic_ntk_frequencies_above_l0():
    config = head_config(
        rope_scaling="dynamic_ntk", rope_scaling_factor=2.0, rope_original_max_length=16
    )
    key_positions = jnp.asarray([[0, 5, 39]])

    frequencies, scale = jax.jit(rope_lib.scaled_frequencies, static_argnums=(0, 1))(
        config, 8, key_positions
    )

    # L = 40: base' = 1e4 * (2 * 40 / 16 - 1) ** (8/6), theta' = base' ** (-2i/8).
    expected = [1.0, 0.06299605249474366, 0.003968502629920499, 0.00025]
    np.testing.assert_allclose(np.asarray(frequencies), expected, rtol=FREQUENCY_RTOL)
    assert scale == 1.0


# Relative property: shifting every query and key position by c leaves
# q . k unchanged.


def pair_norms(x, layout):
    """Return ``[B, T, N, H // 2]`` norms of the feature pairs that rotate together."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    if layout == "interleaved":
        return np.hypot(x[..., 0::2], x[..., 1::2])
    return np.hypot(x[..., :half], x[..., half:])


def logits_float64(q, k):
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    return np.einsum("btnh,bsnh->bnts", q, k)


def shift_atol(q_out, k_out, layout, max_angles):
    """Bound |q.k(shifted) - q.k(unshifted)| for every query-key pair.

    The positions and frequencies are the same float32 numbers in both calls,
    so an exact angle difference (m + c) theta - (n + c) theta is the same.
    What differs is the rounding of each product position * theta, at most
    U32 * |angle|, and sine, cosine and the rotation, at most 8 * U32 per pair
    as in test_rotary. A pair of output norms a (query) and b (key) then moves
    by at most a * b * (2 * U32 * max_angle + 16 * U32) in each call, twice
    that between the two calls. Rotation preserves a pair's norm, so a and b
    include any YaRN or xPos scale. Logits are summed in float64, which adds
    nothing at this scale.

    Args:
      q_out, k_out: rotated ``[B, T, N, H]`` outputs of the unshifted call.
      layout: the pairing of features.
      max_angles: ``[H // 2]`` or ``[N, H // 2]`` bound on |angle| of each pair
        over both calls, zero for pairs that do not rotate.
    """
    per_pair = 2 * (2 * U32 * np.asarray(max_angles, np.float64) + 16 * U32)
    query_terms = pair_norms(q_out, layout) * per_pair
    return np.einsum("btnp,bsnp->bnts", query_terms, pair_norms(k_out, layout))


def padded_max_angles(frequencies, max_position, head_dim):
    """Return max |angle| of each pair, with zeros for pairs past rotary_dim."""
    frequencies = np.asarray(frequencies, np.float64)
    angles = max_position * np.abs(frequencies)
    missing = head_dim // 2 - frequencies.shape[-1]
    pad = [(0, 0)] * (angles.ndim - 1) + [(0, missing)]
    return np.pad(angles, pad)


H_RELATIVE = 16  # Head dim of the relative-property cases.

# Each case: config overrides of a model with 2 heads of H_RELATIVE features.
RELATIVE_CASES = {
    "rope": dict(),
    "rope_half_layout": dict(rotary_layout="half"),
    "rope_partial": dict(rotary_fraction=0.5),
    "linear": dict(rope_scaling="linear", rope_scaling_factor=4.0),
    "ntk": dict(rope_scaling="ntk", rope_scaling_factor=8.0),
    "yarn": dict(
        rope_scaling="yarn", rope_scaling_factor=8.0, rope_original_max_length=64
    ),
    "llama3": dict(
        rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_length=256
    ),
    "rope_learned": dict(position_encoding="rope_learned"),
    "rope_learned_per_head": dict(
        position_encoding="rope_learned", rotary_learned_per_head=True
    ),
    "xpos": dict(position_encoding="xpos"),
    "xpos_half_layout": dict(position_encoding="xpos", rotary_layout="half"),
}
SHIFTS = [1, 1000, 100_000]


def relative_config(**overrides):
    return head_config(num_heads=2, hidden_size=2 * H_RELATIVE, **overrides)


def perturbed_params(config, q, key_positions):
    """Initialise learned frequencies, then move each by up to a factor e**0.5."""
    _, variables = run_transform(config, q, q, key_positions, key_positions)
    if "params" not in variables:
        return None
    params = variables["params"]
    log_frequencies = np.asarray(params["log_frequencies"])
    noise = np.random.default_rng(5).uniform(-0.5, 0.5, log_frequencies.shape)
    return {"log_frequencies": jnp.asarray(log_frequencies + noise, jnp.float32)}


def variant_frequencies(config, params):
    if params is not None:
        return np.exp(np.asarray(params["log_frequencies"], np.float64))
    rotary_dim = rope_lib.resolve_rotary_dim(config)
    frequencies, _ = rope_lib.scaled_frequencies(config, rotary_dim, None)
    return frequencies


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("case", RELATIVE_CASES, ids=str)
def test_relative_under_shift(case, shift):
    config = relative_config(**RELATIVE_CASES[case])
    q = random_normal((2, 8, 2, H_RELATIVE), seed=3)
    k = random_normal((2, 8, 2, H_RELATIVE), seed=4)
    key_positions = np.random.default_rng(6).integers(0, 64, (2, 8), dtype=np.int32)
    params = perturbed_params(config, q, key_positions)

    (q_out, k_out, _, _), _ = run_transform(
        config, q, k, key_positions, key_positions, params=params
    )
    shifted = key_positions + shift
    (q_shift, k_shift, _, _), _ = run_transform(
        config, q, k, shifted, shifted, params=params
    )

    frequencies = variant_frequencies(config, params)
    max_angles = padded_max_angles(frequencies, int(shifted.max()), H_RELATIVE)
    atol = shift_atol(q_out, k_out, config.rotary_layout, max_angles)
    difference = np.abs(logits_float64(q_shift, k_shift) - logits_float64(q_out, k_out))
    assert np.all(difference <= atol), f"max excess {np.max(difference - atol)}"


def test_relative_changes_with_distance():
    """A control for the shift test: moving only the keys changes q . k."""
    config = relative_config()
    q = random_normal((1, 4, 2, H_RELATIVE), seed=3)
    key_positions = np.arange(4, dtype=np.int32)[None]

    (q_out, k_out, _, _), _ = run_transform(config, q, q, key_positions, key_positions)
    (_, k_moved, _, _), _ = run_transform(
        config, q, q, key_positions, key_positions + 3
    )

    assert not np.allclose(logits_float64(q_out, k_out), logits_float64(q_out, k_moved))


# rope_2d.

GRID_WIDTH = 16
# (rows, columns) shifts; columns stay below GRID_WIDTH because every
# unshifted column is below 8.
GRID_SHIFTS = [(1, 1), (100, 5), (6000, 8)]


@pytest.mark.parametrize("layout", rotary.LAYOUTS)
@pytest.mark.parametrize("row_shift, col_shift", GRID_SHIFTS)
def test_rope_2d_relative_on_grid(row_shift, col_shift, layout):
    config = relative_config(
        position_encoding="rope_2d", rotary_grid_width=GRID_WIDTH, rotary_layout=layout
    )
    q = random_normal((2, 8, 2, H_RELATIVE), seed=7)
    k = random_normal((2, 8, 2, H_RELATIVE), seed=8)
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 8, (2, 8))
    cols = rng.integers(0, 8, (2, 8))
    patches = (rows * GRID_WIDTH + cols).astype(np.int32)
    shifted = ((rows + row_shift) * GRID_WIDTH + cols + col_shift).astype(np.int32)

    (q_out, k_out, _, _), _ = run_transform(config, q, k, patches, patches)
    (q_shift, k_shift, _, _), _ = run_transform(config, q, k, shifted, shifted)

    # Row pairs turn by at most max_row * theta', column pairs by at most
    # (GRID_WIDTH - 1) * theta', with theta' = 1e4 ** (-2i / 8), i < 4.
    frequencies = np.asarray(theta(H_RELATIVE // 2, 1e4), np.float64)
    max_row = int((rows + row_shift).max())
    max_angles = np.concatenate([max_row * frequencies, (GRID_WIDTH - 1) * frequencies])
    atol = shift_atol(q_out, k_out, layout, max_angles)
    difference = np.abs(logits_float64(q_shift, k_shift) - logits_float64(q_out, k_out))
    assert np.all(difference <= atol), f"max excess {np.max(difference - atol)}"


def test_rope_2d_wraps_at_row_end():
    """Shifting one column past the row end is a new row, so q . k changes."""
    config = relative_config(position_encoding="rope_2d", rotary_grid_width=GRID_WIDTH)
    q = random_normal((1, 2, 2, H_RELATIVE), seed=10)
    patches = np.array([[14, 15]], np.int32)

    (q_out, k_out, _, _), _ = run_transform(config, q, q, patches, patches)
    (q_next, k_next, _, _), _ = run_transform(config, q, q, patches + 1, patches + 1)

    assert not np.allclose(logits_float64(q_out, k_out), logits_float64(q_next, k_next))


def test_axial_angles_values():
    patches = jnp.asarray([[0, 17, 35]])

    angles = rope_lib.axial_angles(patches, 8, 1e4, 16)

    # (row, col) = divmod(p, 16) = (0, 0), (1, 1), (2, 3); theta' = [1, 0.01]
    # over width 4; angles = [row, row * 0.01, col, col * 0.01].
    expected = [[[0, 0, 0, 0], [1, 0.01, 1, 0.01], [2, 0.02, 3, 0.03]]]
    np.testing.assert_allclose(np.asarray(angles), expected, rtol=4 * U32, atol=0)


# rope_learned.


@pytest.mark.parametrize(
    "per_head, shape, axes",
    [(False, (4,), (None,)), (True, (2, 4), ("heads", None))],
    ids=["shared", "per_head"],
)
def test_learned_frequencies_parameter(per_head, shape, axes):
    config = head_config(
        position_encoding="rope_learned",
        num_heads=2,
        hidden_size=16,
        rotary_learned_per_head=per_head,
    )
    x = jnp.zeros((1, 3, 2, 8))
    key_positions = jnp.zeros((1, 3), jnp.int32)

    boxed = positions.get("rope_learned")(config).init(
        jax.random.PRNGKey(0), x, x, x, key_positions, key_positions, method="transform"
    )["params"]
    spec = nn.get_partition_spec(boxed)["log_frequencies"]
    log_frequencies = nn.meta.unbox(boxed)["log_frequencies"]

    # log(1e4 ** (-2i/8)) = -i * ln(1e4) / 4 for i < 4, in float64.
    expected = np.broadcast_to(
        [0.0, -2.302585092994046, -4.605170185988092, -6.907755278982137], shape
    )
    assert log_frequencies.shape == shape
    assert log_frequencies.dtype == jnp.float32
    assert tuple(spec) == axes
    np.testing.assert_allclose(np.asarray(log_frequencies), expected, atol=8 * U32)


def test_learned_frequencies_get_gradient():
    config = head_config(position_encoding="rope_learned")
    q = random_normal((1, 4, 1, 8), seed=11)
    key_positions = jnp.arange(4, dtype=jnp.int32)[None]
    _, variables = run_transform(config, q, q, key_positions, key_positions)

    def score(params):
        (q_out, k_out, _, _), _ = run_transform(
            config, q, q, key_positions, key_positions, params=params
        )
        return jnp.sum(jnp.einsum("btnh,bsnh->bts", q_out, k_out) ** 2)

    gradient = jax.grad(score)(variables["params"])["log_frequencies"]

    assert np.all(np.isfinite(gradient))
    assert np.any(np.asarray(gradient) != 0)


def primitive_output_dtypes(jaxpr, primitive_name):
    dtypes = [
        var.aval.dtype
        for eqn in jaxpr.eqns
        if eqn.primitive.name == primitive_name
        for var in eqn.outvars
    ]
    for subjaxpr in jax_core.subjaxprs(jaxpr):
        dtypes += primitive_output_dtypes(subjaxpr, primitive_name)
    return dtypes


@pytest.mark.parametrize("encoding", rope_lib.ROPE_ENCODINGS)
def test_bf16_angles_float32(encoding):
    config = head_config(
        position_encoding=encoding, dtype="bfloat16", rotary_learned_per_head=True
    )
    x = jnp.ones((1, 4, 1, 8), jnp.bfloat16)
    key_positions = jnp.arange(4, dtype=jnp.int32)[None]
    (outputs, variables) = run_transform(config, x, x, key_positions, key_positions)
    encoding_module = positions.get(encoding)(config)

    def transform(x):
        return encoding_module.apply(
            variables, x, x, x, key_positions, key_positions, method="transform"
        )

    jaxpr = jax.make_jaxpr(transform)(x).jaxpr
    sin_dtypes = primitive_output_dtypes(jaxpr, "sin")
    cos_dtypes = primitive_output_dtypes(jaxpr, "cos")

    assert outputs[0].dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert sin_dtypes
    assert all(dtype == jnp.float32 for dtype in sin_dtypes)
    assert all(dtype == jnp.float32 for dtype in cos_dtypes)


# xPos.


def test_xpos_decay_rates_values():
    rates = xpos_lib.xpos_decay_rates(8)

    # zeta_i = (2i/8 + 0.4) / 1.4, i < 4.
    expected = [
        0.2857142857142857,
        0.46428571428571436,
        0.6428571428571429,
        0.8214285714285714,
    ]
    np.testing.assert_allclose(np.asarray(rates), expected, rtol=4 * U32)


def test_xpos_scales_values():
    scales = xpos_lib.xpos_scales(jnp.asarray([100, -100]), 8, 512.0)

    # zeta_i ** (100 / 512) and its inverse, zeta_i as above.
    forward = np.array(
        [0.782954834501328, 0.8608331995960548, 0.917323159399417, 0.9623087062319714]
    )
    # exp(x * ln(zeta) / 512) with |x * ln(zeta) / 512| < 0.25: the log, the
    # product, the division and the exp each add about U32 relative.
    np.testing.assert_allclose(np.asarray(scales[0]), forward, rtol=8 * U32)
    np.testing.assert_allclose(np.asarray(scales[1]), 1 / forward, rtol=8 * U32)


def test_xpos_offset_midpoint():
    key_positions = jnp.asarray([[0, 7, 3], [100, 108, 104], [-3, 4, 0]])

    offset = xpos_lib.xpos_offset(key_positions)

    # floor((min + max) / 2) per row.
    np.testing.assert_array_equal(np.asarray(offset), [[3], [104], [0]])


def test_xpos_offset_int32_extremes():
    key_positions = jnp.asarray([[2**31 - 1, 2**31 - 3]], jnp.int32)

    offset = xpos_lib.xpos_offset(key_positions)

    assert int(offset[0, 0]) == 2**31 - 2


def test_xpos_long_positions_finite():
    """Without the offset, zeta_0 ** (1e5 / 512) = e**-245 would underflow to 0."""
    config = head_config(position_encoding="xpos")
    ones = jnp.ones((1, 1, 1, 8), jnp.float32)

    (q, k, _, _), _ = run_transform(config, ones, ones, [[100_100]], [[100_000]])
    score = float(jnp.sum(q * k))

    assert np.all(np.isfinite(np.asarray(q)))
    assert np.all(np.isfinite(np.asarray(k)))
    # The score of "xpos" in SCORE_CASES, m - n = 100. The query and key angles
    # each round to within U32 * 1e5 * theta_i with theta_i <= 1, so each of
    # the 4 pair terms 2 * c_i * cos(.), c_i < 1.2, moves by at most
    # 2 * 1.2 * (2e5 * U32 + 8 * U32).
    atol = 4 * 2 * 1.2 * (2e5 * U32 + 8 * U32)
    assert score == pytest.approx(2.811978180216821, abs=atol)


# RoFormer's long-term decay.

# (1 / 64) * sum_{j=1}^{64} |S_j|, S_j = sum_{k<j} exp(1j * r * theta_k),
# theta_k = 1e4 ** (-2k/128), averaged over each window of distances r,
# in float64.
DECAY_WINDOWS = {
    (0, 10): 24.133664622214535,
    (10, 100): 12.092173627643287,
    (100, 1000): 6.698575502505284,
    (1000, 10000): 4.795647110007537,
}
# The same bound at r = 0, 1, 2, 10, 100 and 1000, in float64.
DECAY_POINTS = {
    0: 32.5,
    1: 31.538166142658085,
    2: 28.955988473564467,
    10: 17.954137137084835,
    100: 10.227329948505133,
    1000: 4.470761034248728,
}


def reference_upper_bound(distances, rotary_dim=128, base=10000.0):
    """Evaluate RoFormer's relative bound in float64 numpy."""
    frequencies = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    terms = np.exp(1j * np.asarray(distances, np.float64)[:, None] * frequencies)
    return np.abs(np.cumsum(terms, axis=-1)).mean(axis=-1)


def upper_bound_atol(distances, rotary_dim=128, base=10000.0):
    """Bound the float32 error of relative_upper_bound at each distance.

    Term k has angle r * theta_k with an error of at most 4 * U32 * r * theta_k
    (the rotary module docstring's 2.4 plus room for pow), and sin and cos add
    4 * U32. The cumulative sum of j unit terms rounds j times at magnitude at
    most j, 2 * j**2 * U32 for both parts, and the hypot adds 2 * j * U32. The
    mean over j keeps the bound on the mean of errors.
    """
    frequencies = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    term_errors = (
        4 * U32 * np.abs(np.asarray(distances, np.float64))[:, None] * frequencies
    )
    term_errors = term_errors + 4 * U32
    j = np.arange(1, rotary_dim // 2 + 1)
    per_partial_sum = np.cumsum(term_errors, axis=-1) + 2 * j**2 * U32 + 2 * j * U32
    return per_partial_sum.mean(axis=-1)


def test_upper_bound_points():
    distances = np.array(list(DECAY_POINTS), np.int32)

    bound = rotary.relative_upper_bound(distances, 128, 10000.0)

    expected = np.array(list(DECAY_POINTS.values()))
    difference = np.abs(np.asarray(bound, np.float64) - expected)
    assert bound.dtype == jnp.float32
    assert np.all(difference <= upper_bound_atol(distances))


def test_upper_bound_matches_float64():
    distances = np.arange(0, 10000, dtype=np.int32)

    bound = np.asarray(rotary.relative_upper_bound(distances, 128, 10000.0), np.float64)

    difference = np.abs(bound - reference_upper_bound(distances))
    assert np.all(difference <= upper_bound_atol(distances))


def test_upper_bound_window_means_decrease():
    window_means = []
    for (start, stop), expected in DECAY_WINDOWS.items():
        distances = np.arange(start, stop, dtype=np.int32)
        bound = rotary.relative_upper_bound(distances, 128, 10000.0)
        mean = float(np.mean(np.asarray(bound, np.float64)))
        # The mean of the errors is at most the largest one in the window.
        assert mean == pytest.approx(expected, abs=upper_bound_atol([stop]).item())
        window_means.append(mean)

    for earlier, later in zip(window_means, window_means[1:], strict=False):
        assert later < earlier


def test_upper_bound_symmetric():
    bound = rotary.relative_upper_bound(np.array([-37, 37], np.int32), 128)

    assert float(bound[0]) == pytest.approx(float(bound[1]), abs=1e-5)


# Helpers in rotary.py.

FRACTION_CASES = [
    (64, 0.25, 16),
    (10, 0.3, 4),  # 3 rounds up to 4.
    (12, 0.25, 4),  # 3 rounds up to 4.
    (12, 0.5, 6),
    (7, 1.0, 6),  # The largest even width of an odd head.
    (8, 0.01, 2),  # At least one pair.
    (8, 1.0, 8),
]


@pytest.mark.parametrize("head_dim, fraction, expected", FRACTION_CASES)
def test_rotary_dim_from_fraction(head_dim, fraction, expected):
    assert rotary.rotary_dim_from_fraction(head_dim, fraction) == expected


def test_resolve_rotary_dim_explicit_wins():
    config = head_config(hidden_size=32, num_heads=2, rotary_dim=4, rotary_fraction=0.5)

    assert rope_lib.resolve_rotary_dim(config) == 4


def test_resolve_rotary_dim_from_fraction():
    config = head_config(hidden_size=32, num_heads=2, rotary_fraction=0.5)

    assert rope_lib.resolve_rotary_dim(config) == 8


def test_per_head_angles_match_apply_rotary():
    x = random_normal((2, 5, 2, 8), seed=12)
    key_positions = np.array([np.arange(5), np.arange(30, 35)], np.int32)
    frequencies = np.stack([theta(8, 1e4), theta(8, 100.0)])  # [N, d/2]

    angles = rotary.angles_from_frequencies(key_positions, frequencies)
    out = rotary.apply_rotary_angles(x, angles, layout="half")
    first = rotary.apply_rotary(x[:, :, :1], key_positions, base=1e4, layout="half")
    second = rotary.apply_rotary(x[:, :, 1:], key_positions, base=100.0, layout="half")

    assert angles.shape == (2, 5, 2, 4)
    np.testing.assert_array_equal(np.asarray(out[:, :, :1]), np.asarray(first))
    np.testing.assert_array_equal(np.asarray(out[:, :, 1:]), np.asarray(second))


def test_angles_from_frequencies_matches_rotary_angles():
    key_positions = np.array([[0, 9, 70_000]], np.int32)

    angles = rotary.angles_from_frequencies(key_positions, theta(16, 1e4))
    expected = rotary.rotary_angles(key_positions, 16, 1e4)

    np.testing.assert_array_equal(np.asarray(angles), np.asarray(expected))


# The encodings inside the language model.

B, T, V = 4, 16, 50

# Each variant: config overrides. rope_original_max_length = 8 < T puts the
# rescalings, dynamic NTK included, in their extended regime.
MODEL_VARIANTS = {
    "rope_partial": dict(position_encoding="rope", rotary_fraction=0.5),
    "rope_linear": dict(
        rope_scaling="linear", rope_scaling_factor=4.0, rope_original_max_length=8
    ),
    "rope_ntk": dict(rope_scaling="ntk", rope_scaling_factor=4.0),
    "rope_dynamic_ntk": dict(
        rope_scaling="dynamic_ntk", rope_scaling_factor=4.0, rope_original_max_length=8
    ),
    "rope_yarn": dict(
        rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_max_length=8
    ),
    "rope_llama3": dict(
        rope_scaling="llama3", rope_scaling_factor=4.0, rope_original_max_length=8
    ),
    "rope_value": dict(rope_scaling="yarn", rotary_value=True, rope_scaling_factor=2.0),
    "rope_learned": dict(position_encoding="rope_learned"),
    "rope_learned_per_head": dict(
        position_encoding="rope_learned", rotary_learned_per_head=True
    ),
    "rope_2d": dict(position_encoding="rope_2d", rotary_grid_width=4),
    "xpos": dict(position_encoding="xpos"),
}


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    values.update(overrides)
    return ModelConfig(**values)


def model_inputs(seed=0):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V)
    token_positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return tokens, token_positions, jnp.ones_like(tokens)


def init_params(config, inputs):
    boxed = LanguageModel(config).init(jax.random.PRNGKey(1), *inputs)["params"]
    return boxed, nn.meta.unbox(boxed)


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=str)
def test_model_logits_finite(variant, causal):
    config = tiny_config(causal=causal, **MODEL_VARIANTS[variant])
    inputs = model_inputs()
    _, params = init_params(config, inputs)

    logits = LanguageModel(config).apply({"params": params}, *inputs)

    assert logits.shape == (B, T, V)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=str)
def test_model_bfloat16(variant):
    config = tiny_config(causal=True, dtype="bfloat16", **MODEL_VARIANTS[variant])
    reference_config = tiny_config(causal=True, **MODEL_VARIANTS[variant])
    inputs = model_inputs()
    _, params = init_params(config, inputs)

    logits = LanguageModel(config).apply({"params": params}, *inputs)
    reference = LanguageModel(reference_config).apply({"params": params}, *inputs)

    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert np.all(np.isfinite(np.asarray(logits)))
    # As in test_models: two layers of bfloat16 activations, each rounded to
    # U_BF16 relative, on logits of order 1; 0.1 absolute.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=0.1)


def sharding_setup():
    config = tiny_shakespeare.get_config()
    with config.unlocked():
        config.mesh.data = 2
        config.mesh.fsdp = 2
        config.mesh.tensor = 2
    return mesh_lib.make_mesh(config.mesh), mesh_lib.axis_rules(config.mesh)


@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=str)
def test_model_sharded_matches_unsharded(variant):
    config = tiny_config(causal=True, **MODEL_VARIANTS[variant])
    inputs = model_inputs()
    boxed, params = init_params(config, inputs)
    model = LanguageModel(config)
    mesh, rules = sharding_setup()
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)

    sharded_params = jax.device_put(params, shardings)
    sharded_inputs = jax.device_put(inputs, mesh_lib.batch_sharding(mesh))
    sharded = jax.jit(model.apply)({"params": sharded_params}, *sharded_inputs)
    unsharded = jax.jit(model.apply)({"params": params}, *inputs)

    # Sharded matmuls sum their float32 partial products in another order: a
    # few U32 relative per layer on values of order 1, so 1e-5 absolute.
    np.testing.assert_allclose(
        np.asarray(sharded), np.asarray(unsharded), rtol=1e-5, atol=1e-5
    )


def test_learned_per_head_sharded_over_tensor():
    config = tiny_config(**MODEL_VARIANTS["rope_learned_per_head"])
    boxed, params = init_params(config, model_inputs())
    mesh, rules = sharding_setup()
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)

    sharded = jax.device_put(params, shardings)
    log_frequencies = sharded["transformer"]["layer_0"]["attention"]["position"][
        "log_frequencies"
    ]

    assert log_frequencies.shape == (4, 4)
    assert log_frequencies.sharding.spec == PartitionSpec("tensor", None)


def test_learned_at_init_matches_rope():
    config = tiny_config(position_encoding="rope_learned", causal=True)
    inputs = model_inputs()
    _, params = init_params(config, inputs)

    learned = LanguageModel(config).apply({"params": params}, *inputs)
    rope = LanguageModel(tiny_config(causal=True)).apply({"params": params}, *inputs)

    # exp(log(theta)) in float32 is within a few U32 of theta, so angles up to
    # 16 radians move by about 1e-5 at most, and logits of order 1 by less.
    np.testing.assert_allclose(np.asarray(learned), np.asarray(rope), atol=1e-4)


def test_rope_family_registered():
    names = positions.registered_names()

    for name in rope_lib.ROPE_ENCODINGS:
        assert name in names


# Errors.

CONFIG_ERRORS = {
    "scaling_unknown": (
        dict(rope_scaling="ntk_by_parts"),
        r"model\.rope_scaling='ntk_by_parts' is invalid.*'dynamic_ntk'.*'llama3'",
    ),
    "factor_below_one": (
        dict(rope_scaling="linear", rope_scaling_factor=0.5),
        r"model\.rope_scaling_factor=0\.5 is invalid",
    ),
    "factor_nan": (
        dict(rope_scaling_factor=float("nan")),
        r"model\.rope_scaling_factor=nan is invalid",
    ),
    "original_length_zero": (
        dict(rope_original_max_length=0),
        r"model\.rope_original_max_length=0 is invalid",
    ),
    "original_length_float": (
        dict(rope_original_max_length=512.0),
        r"model\.rope_original_max_length=512\.0 is invalid",
    ),
    "fraction_zero": (
        dict(rotary_fraction=0.0),
        r"model\.rotary_fraction=0\.0 is invalid",
    ),
    "fraction_above_one": (
        dict(rotary_fraction=1.5),
        r"model\.rotary_fraction=1\.5 is invalid.*\(0, 1\]",
    ),
    "yarn_betas": (
        dict(rope_scaling="yarn", yarn_beta_fast=1.0, yarn_beta_slow=32.0),
        r"model\.yarn_beta_fast=1\.0 and model\.yarn_beta_slow=32\.0 are invalid",
    ),
    "llama3_factors": (
        dict(
            rope_scaling="llama3",
            llama3_low_freq_factor=4.0,
            llama3_high_freq_factor=1.0,
        ),
        r"model\.llama3_low_freq_factor=4\.0 and model\.llama3_high_freq_factor=1\.0",
    ),
    "scaling_with_learned": (
        dict(position_encoding="rope_learned", rope_scaling="linear"),
        r"model\.rope_scaling='linear' is read only by the 'rope' encoding",
    ),
    "ntk_two_features": (
        dict(rope_scaling="ntk", rotary_dim=2),
        r"model\.rope_scaling='ntk' needs at least 4 rotated features",
    ),
    "rotary_dim_odd": (dict(rotary_dim=5), r"model\.rotary_dim=5 is invalid"),
    "rotary_dim_too_large": (
        dict(rotary_dim=16),
        r"model\.rotary_dim=16 is invalid for head dim 8",
    ),
    "layout_unknown": (
        dict(rotary_layout="neox"),
        r"model\.rotary_layout='neox' is invalid.*'interleaved', 'half'",
    ),
    "rope_2d_width": (
        dict(position_encoding="rope_2d", rotary_dim=6),
        r"model\.rotary_dim=6 .*multiple of 4",
    ),
    "rope_2d_grid": (
        dict(position_encoding="rope_2d", rotary_grid_width=0),
        r"model\.rotary_grid_width=0 is invalid",
    ),
    "xpos_scale_base": (
        dict(position_encoding="xpos", xpos_scale_base=0.0),
        r"model\.xpos_scale_base=0\.0 is invalid",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=str)
def test_validate_rope_options_raises(case):
    overrides, message = CONFIG_ERRORS[case]
    config = head_config(**overrides)

    with pytest.raises(ValueError, match=message):
        rope_lib.validate_rope_options(config)


def test_validate_rope_options_accepts_defaults():
    for name in rope_lib.ROPE_ENCODINGS:
        rope_lib.validate_rope_options(head_config(position_encoding=name))


def test_invalid_option_raises_in_model():
    config = tiny_config(rope_scaling="ntk_by_parts")

    with pytest.raises(ValueError, match=r"model\.rope_scaling='ntk_by_parts'"):
        init_params(config, model_inputs())


FUNCTION_ERRORS = {
    "yarn_betas": (
        lambda: rope_scaling.yarn_frequencies(theta(8, 1e4), 4.0, 64, 1.0, 32.0),
        r"beta_fast=1\.0 is not greater than beta_slow=32\.0",
    ),
    "llama3_band": (
        lambda: rope_scaling.llama3_frequencies(theta(8, 1e4), 4.0, 64, 4.0, 4.0),
        r"high_freq_factor=4\.0 is not greater than low_freq_factor=4\.0",
    ),
    "ntk_two_features": (
        lambda: rope_scaling.ntk_base(1e4, 4.0, 2),
        r"rotary_dim=2 is invalid for NTK scaling",
    ),
    "factor_zero": (
        lambda: rope_scaling.linear_frequencies(theta(8, 1e4), 0.0),
        r"factor=0\.0 is not positive",
    ),
    "original_length_zero": (
        lambda: rope_scaling.dynamic_ntk_base(1e4, 2.0, 8, 0, 10),
        r"original_max_length=0 is not positive",
    ),
    "yarn_scale_below_one": (
        lambda: rope_scaling.yarn_attention_scale(0.5),
        r"factor=0\.5 is below 1",
    ),
    "fraction_zero": (
        lambda: rotary.rotary_dim_from_fraction(8, 0.0),
        r"fraction=0\.0 is outside \(0, 1\]",
    ),
    "frequencies_rank": (
        lambda: rotary.angles_from_frequencies(
            np.zeros((1, 2), np.int32), np.ones((1, 2, 2))
        ),
        r"frequencies shape \(1, 2, 2\)",
    ),
    "angles_heads": (
        lambda: rotary.apply_rotary_angles(
            np.zeros((1, 2, 3, 8)), np.zeros((1, 2, 2, 4))
        ),
        r"angles shape \(1, 2, 2, 4\) matches neither",
    ),
}


@pytest.mark.parametrize("case", FUNCTION_ERRORS, ids=str)
def test_function_errors(case):
    call, message = FUNCTION_ERRORS[case]

    with pytest.raises(ValueError, match=message):
        call()
