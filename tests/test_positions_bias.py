"""Tests of the attention-bias position encodings: t5, alibi, kerple_log, fire.

Every golden value comes from an independent float64 numpy reference written
here, or from the formula in the encoding's module docstring, evaluated by
hand in a comment. Relative
positions are j - i (key minus query), as in the encodings.

Tolerances use U32 = 2**-24, the float32 unit roundoff (the largest relative
error of one rounding to nearest), and each test states its bound.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from roformer_jax import positions
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.positions import alibi, t5
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.state import plan_state

ENCODINGS = ("t5", "alibi", "kerple_log", "fire")
SHIFT_INVARIANT = ("t5", "alibi", "kerple_log")
U32 = 2.0**-24
B, T, V = 2, 16, 50
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
)


def tiny_config(encoding: str, **overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        position_encoding=encoding,
    )
    values.update(overrides)
    return ModelConfig(**values)


def scattered_positions(seed: int, batch: int, length: int, high: int) -> np.ndarray:
    """Return int32 `[batch, length]` positions in [0, high), in no order."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, size=(batch, length)).astype(np.int32)


def _attention_inputs(config, q_positions, k_positions):
    shape_q = (*q_positions.shape, config.num_heads, config.head_dim)
    shape_k = (*k_positions.shape, config.num_heads, config.head_dim)
    return jnp.zeros(shape_q), jnp.zeros(shape_k), jnp.zeros(shape_k)


def init_encoding(config, q_positions, k_positions):
    """Initialise the configured encoding alone; return its unboxed params."""
    module = positions.get(config.position_encoding)(config)
    q, k, v = _attention_inputs(config, q_positions, k_positions)
    variables = module.init(
        jax.random.PRNGKey(0), q, k, v, q_positions, k_positions, method="transform"
    )
    return nn.meta.unbox(variables.get("params", {}))


def encoding_bias(config, params, q_positions, k_positions) -> np.ndarray:
    """Return the encoding's `[B, N, T, S]` bias as a numpy array."""
    module = positions.get(config.position_encoding)(config)
    q, k, v = _attention_inputs(config, q_positions, k_positions)
    _, _, _, bias = module.apply(
        {"params": params},
        q,
        k,
        v,
        jnp.asarray(q_positions),
        jnp.asarray(k_positions),
        method="transform",
    )
    return np.asarray(bias)


def model_inputs(batch=B, length=T):
    tokens = jax.random.randint(jax.random.PRNGKey(7), (batch, length), 0, V)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return tokens, pos, jnp.ones_like(tokens)


# Float64 references.


def reference_bucket(relative, *, bidirectional, num_buckets, max_distance):
    """T5 bucket of one relative position j - i, from the log formula in float64."""
    if bidirectional:
        per_direction = num_buckets // 2
        offset = per_direction if relative > 0 else 0
        distance = abs(relative)
    else:
        per_direction = num_buckets
        offset = 0
        distance = max(-relative, 0)
    max_exact = per_direction // 2
    if distance < max_exact:
        return offset + distance
    scaled = (
        (per_direction - max_exact)
        * math.log(distance / max_exact)
        / math.log(max_distance / max_exact)
    )
    # Where the formula is mathematically an integer (distances 16, 32 and 64
    # with the defaults), float64 could round a few ulps below it. The 1e-9
    # nudge guards against that and moves no other value in these sweeps,
    # because all of them lie at least 3e-4 below the next integer.
    bucket = max_exact + math.floor(scaled + 1e-9)
    return offset + min(bucket, per_direction - 1)


def reference_relative(q_positions, k_positions) -> np.ndarray:
    """Return int64 `[B, T, S]` relative positions j - i."""
    q = np.asarray(q_positions, np.int64)
    k = np.asarray(k_positions, np.int64)
    return k[:, None, :] - q[:, :, None]


def reference_softplus(x) -> np.ndarray:
    return np.logaddexp(np.asarray(x, np.float64), 0.0)


def reference_fire(params, q_positions, k_positions) -> np.ndarray:
    """FIRE bias f(psi(|i - j|) / psi(max(L, i))) in float64, `[B, N, T, S]`."""
    c = abs(float(params["distance_scale"]))
    threshold = abs(float(params["threshold_multiplier"])) * 512.0
    distance = np.abs(reference_relative(q_positions, k_positions)).astype(np.float64)
    query = np.asarray(q_positions, np.float64)
    normaliser = np.log(c * np.maximum(threshold, query) + 1.0) + 1e-6
    ratio = np.log(c * distance + 1.0) / normaliser[:, :, None]
    w1 = np.asarray(params["hidden"]["kernel"], np.float64)[0]  # [W]
    b1 = np.asarray(params["hidden"]["bias"], np.float64)
    w2 = np.asarray(params["output"]["kernel"], np.float64)  # [W, N]
    b2 = np.asarray(params["output"]["bias"], np.float64)
    hidden = np.maximum(ratio[..., None] * w1 + b1, 0.0)  # [B, T, S, W]
    return np.transpose(hidden @ w2 + b2, (0, 3, 1, 2))


def fire_params(config, q_positions, k_positions, *, c, multiplier):
    params = dict(init_encoding(config, q_positions, k_positions))
    params["distance_scale"] = jnp.float32(c)
    params["threshold_multiplier"] = jnp.float32(multiplier)
    return params


# T5 bucketing.

# Default bidirectional bucketing: 16 buckets per direction, 8 exact, and
# n >= 8 gets 8 + floor(8 * log(n / 8) / log(128 / 8)) = 8 + floor(2 log2(n / 8)),
# capped at 15. For example 11 -> 8 + floor(0.92), 12 -> 8 + floor(1.17),
# 23 -> 8 + floor(3.05), 46 -> 8 + floor(5.05), 91 -> 8 + floor(7.01).
BIDIRECTIONAL_BY_DISTANCE = {
    0: 0, 1: 1, 7: 7, 8: 8, 11: 8, 12: 9, 15: 9, 16: 10, 22: 10, 23: 11,
    31: 11, 32: 12, 45: 12, 46: 13, 63: 13, 64: 14, 90: 14, 91: 15, 127: 15,
    128: 15, 1000: 15,
}  # fmt: skip

# Default causal bucketing: 32 buckets, 16 exact, and n >= 16 gets
# 16 + floor(16 * log(n / 16) / log(128 / 16)) = 16 + floor((16/3) log2(n / 16)),
# capped at 31. For example 19 -> 16 + floor(1.32), 31 -> 16 + floor(5.09),
# 63 -> 16 + floor(10.54), 99 -> 16 + floor(14.02), 127 -> 16 + floor(15.94).
CAUSAL_BY_DISTANCE = {
    0: 0, 1: 1, 15: 15, 16: 16, 18: 16, 19: 17, 31: 21, 32: 21, 63: 26,
    64: 26, 99: 30, 100: 30, 127: 31, 128: 31, 1000: 31,
}  # fmt: skip


def t5_buckets(relative, *, bidirectional, num_buckets=32, max_distance=128):
    ids = t5.relative_position_bucket(
        jnp.asarray(relative, jnp.int32),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    return np.asarray(ids)


def test_t5_bidirectional_buckets_by_hand():
    distances = np.array(list(BIDIRECTIONAL_BY_DISTANCE))
    expected = np.array(list(BIDIRECTIONAL_BY_DISTANCE.values()))
    before = t5_buckets(-distances, bidirectional=True)
    after = t5_buckets(distances, bidirectional=True)
    np.testing.assert_array_equal(before, expected)
    # Keys after the query use the upper 16 buckets; distance 0 stays in 0.
    np.testing.assert_array_equal(after[1:], expected[1:] + 16)
    assert after[0] == 0


def test_t5_causal_buckets_by_hand():
    distances = np.array(list(CAUSAL_BY_DISTANCE))
    expected = np.array(list(CAUSAL_BY_DISTANCE.values()))
    before = t5_buckets(-distances, bidirectional=False)
    after = t5_buckets(distances, bidirectional=False)
    np.testing.assert_array_equal(before, expected)
    # Keys after the query share bucket 0 (the causal mask hides them).
    np.testing.assert_array_equal(after, np.zeros_like(expected))


@pytest.mark.parametrize(
    "bidirectional, num_buckets, max_distance",
    [
        (True, 32, 128),
        (False, 32, 128),
        (True, 8, 20),
        (False, 10, 50),
        (True, 64, 1000),
        (False, 2, 5),
    ],
)
def test_t5_buckets_match_reference(bidirectional, num_buckets, max_distance):
    relative = np.arange(-1500, 1501)
    expected = [
        reference_bucket(
            int(r),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
        for r in relative
    ]
    actual = t5_buckets(
        relative,
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(actual, expected)


def test_t5_buckets_reject_invalid_options():
    relative = jnp.arange(3)
    with pytest.raises(ValueError, match="must be even"):
        t5.relative_position_bucket(
            relative, bidirectional=True, num_buckets=33, max_distance=128
        )
    with pytest.raises(ValueError, match="at least 2 per direction"):
        t5.relative_position_bucket(
            relative, bidirectional=True, num_buckets=2, max_distance=128
        )
    with pytest.raises(ValueError, match="must exceed"):
        t5.relative_position_bucket(
            relative, bidirectional=False, num_buckets=32, max_distance=16
        )


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
def test_t5_bias_is_table_lookup(causal):
    config = tiny_config("t5", causal=causal)
    q_positions = scattered_positions(0, B, 5, 400)
    k_positions = scattered_positions(1, B, 7, 400)
    params = init_encoding(config, q_positions, k_positions)
    table = np.asarray(params["relative_attention_bias"])
    buckets = np.vectorize(reference_bucket)(
        reference_relative(q_positions, k_positions),
        bidirectional=not causal,
        num_buckets=32,
        max_distance=128,
    )
    expected = np.transpose(table[buckets], (0, 3, 1, 2))
    bias = encoding_bias(config, params, q_positions, k_positions)
    assert table.shape == (32, 4)
    np.testing.assert_array_equal(bias, expected)


# ALiBi.

# Eight heads: start 2^(-8/8) = 1/2, ratio 1/2. Twelve heads: the eight slopes
# above, then every other slope of the 16-head sequence 2^(-0.5 k), k = 1..16,
# which is 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5. One head: 2^(-8/1).
SLOPE_EXPONENTS = {
    1: [8],
    4: [2, 4, 6, 8],
    8: [1, 2, 3, 4, 5, 6, 7, 8],
    12: [1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5],
}


@pytest.mark.parametrize("num_heads", sorted(SLOPE_EXPONENTS))
def test_alibi_slopes_by_hand(num_heads):
    expected = 2.0 ** -np.array(SLOPE_EXPONENTS[num_heads], np.float64)
    slopes = alibi.alibi_slopes(num_heads)
    assert slopes.shape == (num_heads,)
    # Both sides evaluate 2.0 ** x at the same exactly representable x.
    np.testing.assert_allclose(slopes, expected, rtol=1e-15)


def test_alibi_slopes_reject_zero_heads():
    with pytest.raises(ValueError, match="at least one head"):
        alibi.alibi_slopes(0)


@pytest.mark.parametrize("num_heads", [4, 12])
def test_alibi_bias_matches_reference(num_heads):
    config = tiny_config("alibi", hidden_size=8 * num_heads, num_heads=num_heads)
    q_positions = scattered_positions(2, B, 5, 3000)
    k_positions = scattered_positions(3, B, 7, 3000)
    distance = np.abs(reference_relative(q_positions, k_positions)).astype(np.float64)
    slopes = 2.0 ** -np.array(SLOPE_EXPONENTS[num_heads], np.float64)
    expected = -slopes[None, :, None, None] * distance[:, None]
    bias = encoding_bias(config, {}, q_positions, k_positions)
    assert bias.dtype == np.float32
    # Two float32 roundings (the slope, then the product), each at most U32,
    # bound the relative error by about 2 U32.
    np.testing.assert_allclose(bias, expected, rtol=4 * U32, atol=0)


# KERPLE.


def test_kerple_bias_matches_reference():
    config = tiny_config("kerple_log")
    q_positions = scattered_positions(4, B, 5, 5000)
    k_positions = scattered_positions(5, B, 7, 5000)
    r1 = np.array([0.01, 0.5, 1.0, 1.9])
    r2 = np.array([2.0, 1.0, 0.3, 0.01])
    # The stored values are softplus inverses; the reference re-applies
    # softplus in float64 to the float32 values the module actually holds.
    params = {
        "r1_unconstrained": jnp.asarray(r1 + np.log(-np.expm1(-r1)), jnp.float32),
        "r2_unconstrained": jnp.asarray(r2 + np.log(-np.expm1(-r2)), jnp.float32),
    }
    distance = np.abs(reference_relative(q_positions, k_positions)).astype(np.float64)
    r1_held = reference_softplus(params["r1_unconstrained"])[None, :, None, None]
    r2_held = reference_softplus(params["r2_unconstrained"])[None, :, None, None]
    expected = -r1_held * np.log1p(r2_held * distance[:, None])
    bias = encoding_bias(config, params, q_positions, k_positions)
    np.testing.assert_allclose(r1_held.ravel(), r1, rtol=8 * U32)
    # softplus (twice), the product, log1p (condition number at most 1 in
    # its argument) and the final product each add a few U32.
    np.testing.assert_allclose(bias, expected, rtol=16 * U32, atol=0)


def test_kerple_initial_values_in_range():
    config = tiny_config("kerple_log", num_heads=32, hidden_size=128)
    sample_positions = scattered_positions(6, 1, 4, 10)
    params = init_encoding(config, sample_positions, sample_positions)
    r1 = reference_softplus(params["r1_unconstrained"])
    r2 = reference_softplus(params["r2_unconstrained"])
    # The bounds allow the float32 rounding of the softplus inverse.
    assert r1.min() >= 0.01 * (1 - 1e-5)
    assert r1.max() <= 2.0 * (1 + 1e-5)
    assert r2.min() >= 0.01 * (1 - 1e-5)
    assert r2.max() <= 1.0 * (1 + 1e-5)


# FIRE.

# The bias is a sum of W = 32 products of order 1, so its float32 error is at
# worst about W * U32 = 2e-6 times the sum of the absolute terms (a few units
# here). The 1e-5 absolute tolerance covers that worst case, and the measured
# error on CPU is about 1e-7.
FIRE_ATOL = 1e-5


def test_fire_bias_matches_reference():
    config = tiny_config("fire")
    # L = 0.05 * 512 = 25.6, so queries fall on both sides of the threshold.
    q_positions = scattered_positions(7, B, 9, 80)
    k_positions = scattered_positions(8, B, 11, 80)
    params = fire_params(config, q_positions, k_positions, c=0.3, multiplier=0.05)
    expected = reference_fire(params, q_positions, k_positions)
    bias = encoding_bias(config, params, q_positions, k_positions)
    assert bias.shape == (B, 4, 9, 11)
    np.testing.assert_allclose(bias, expected, rtol=0, atol=FIRE_ATOL)


def test_fire_initial_parameters():
    config = tiny_config("fire")
    sample_positions = scattered_positions(9, 1, 4, 10)
    params = init_encoding(config, sample_positions, sample_positions)
    hidden_kernel = np.asarray(params["hidden"]["kernel"])
    output_kernel = np.asarray(params["output"]["kernel"])
    assert float(params["distance_scale"]) == pytest.approx(0.1)
    assert float(params["threshold_multiplier"]) == 1.0
    assert hidden_kernel.shape == (1, 32)
    assert output_kernel.shape == (32, 4)
    # nn.Linear-style bounds: 1/sqrt(fan_in) with fan_in 1, then 32.
    assert np.abs(hidden_kernel).max() <= 1.0
    assert np.abs(output_kernel).max() <= 32**-0.5


@pytest.mark.parametrize("shift", [1, 100, 448])
def test_fire_shift_invariant_below_threshold(shift):
    """While every query position stays at or below L = 512, max(L, i) = L,
    so the bias depends on i - j alone and shifting changes nothing."""
    config = tiny_config("fire")
    pos = scattered_positions(10, B, 12, 64)
    params = init_encoding(config, pos, pos)
    bias = encoding_bias(config, params, pos, pos)
    shifted = encoding_bias(config, params, pos + shift, pos + shift)
    # Distances are exact int32 differences and the normaliser is psi(L) on
    # both sides, so the two computations are identical operation by operation.
    np.testing.assert_array_equal(shifted, bias)


@pytest.mark.parametrize("shift", [1000, 100_000])
def test_fire_depends_on_query_position(shift):
    """Past L the bias is f(psi(i - j) / psi(i)): shifting every position
    changes it (FIRE is not shift invariant by design), and the shifted bias
    is still the formula evaluated at the shifted (i - j, i)."""
    config = tiny_config("fire")
    pos = scattered_positions(11, B, 12, 64)
    params = fire_params(config, pos, pos, c=0.1, multiplier=1.0)
    bias = encoding_bias(config, params, pos, pos)
    shifted = encoding_bias(config, params, pos + shift, pos + shift)
    expected = reference_fire(params, pos + shift, pos + shift)
    np.testing.assert_allclose(shifted, expected, rtol=0, atol=FIRE_ATOL)
    assert not np.allclose(shifted, bias, rtol=0, atol=1e-3)


def test_fire_depends_on_distance_ratio():
    """With c = 1 and L = 1, psi(x) = log(1 + x): the pairs (i, j) = (3, 2)
    and (15, 12) both give log 2 / log 4 = log 4 / log 16 = 1/2, so they get
    the same bias, while (15, 14) gives log 2 / log 16 = 1/4."""
    config = tiny_config("fire")
    q_positions = np.array([[3, 15]], np.int32)
    k_positions = np.array([[2, 12, 14]], np.int32)
    params = fire_params(
        config, q_positions, k_positions, c=1.0, multiplier=1.0 / 512.0
    )
    bias = encoding_bias(config, params, q_positions, k_positions)
    half_at_3 = bias[0, :, 0, 0]  # (i, j) = (3, 2)
    half_at_15 = bias[0, :, 1, 1]  # (15, 12)
    quarter_at_15 = bias[0, :, 1, 2]  # (15, 14)
    # Both ratios are 1/2 up to the 1e-6 epsilon and float32 rounding of the
    # logs, and the MLP's slope in the ratio is of order 1.
    np.testing.assert_allclose(half_at_3, half_at_15, rtol=0, atol=FIRE_ATOL)
    assert not np.allclose(half_at_15, quarter_at_15, rtol=0, atol=1e-3)


# Relative property: shifting every position by c leaves the bias unchanged.


@pytest.mark.parametrize("shift", [1, 1000, 100_000])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", SHIFT_INVARIANT)
def test_bias_shift_invariant(encoding, causal, shift):
    config = tiny_config(encoding, causal=causal)
    q_positions = scattered_positions(12, B, 5, 300)
    k_positions = scattered_positions(13, B, 7, 300)
    params = init_encoding(config, q_positions, k_positions)
    bias = encoding_bias(config, params, q_positions, k_positions)
    shifted = encoding_bias(config, params, q_positions + shift, k_positions + shift)
    # Exact: each bias is a function of the int32 difference j - i, which
    # the shift does not change, and positions up to 1e5 cannot overflow.
    np.testing.assert_array_equal(shifted, bias)


@pytest.mark.parametrize("encoding", SHIFT_INVARIANT)
def test_logits_shift_invariant(encoding):
    config = tiny_config(encoding, causal=True)
    tokens, pos, segments = model_inputs()
    model = LanguageModel(config)
    params = model.init(jax.random.PRNGKey(1), tokens, pos, segments)["params"]
    logits = model.apply({"params": params}, tokens, pos, segments)
    shifted = model.apply({"params": params}, tokens, pos + 100_000, segments)
    # The biases are bitwise equal (see test_bias_shift_invariant) and nothing
    # else reads positions, so only a different XLA reduction order could
    # separate the two. The tolerance is the usual float32 one, 1e-6.
    np.testing.assert_allclose(shifted, logits, rtol=1e-6, atol=1e-6)


# Inside the full model.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_model_logits_finite(encoding, causal, dtype):
    config = tiny_config(encoding, causal=causal, dtype=dtype)
    tokens, pos, segments = model_inputs()
    model = LanguageModel(config)
    variables = model.init(jax.random.PRNGKey(1), tokens, pos, segments)
    logits = model.apply(variables, tokens, pos, segments)
    assert logits.shape == (B, T, V)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


EXPECTED_AXES = {
    "t5": {("relative_attention_bias",): (None, "heads")},
    "alibi": {},
    "kerple_log": {
        ("r1_unconstrained",): ("heads",),
        ("r2_unconstrained",): ("heads",),
    },
    "fire": {
        ("distance_scale",): (),
        ("threshold_multiplier",): (),
        ("hidden", "kernel"): (None, None),
        ("hidden", "bias"): (None,),
        ("output", "kernel"): (None, "heads"),
        ("output", "bias"): ("heads",),
    },
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_parameters_logical_axes(encoding):
    config = tiny_config(encoding)
    tokens, pos, segments = model_inputs()
    boxed = LanguageModel(config).init(jax.random.PRNGKey(0), tokens, pos, segments)
    attention = nn.get_partition_spec(boxed["params"])["transformer"]["layer_0"][
        "attention"
    ]
    found = {
        tuple(key.key for key in path): tuple(spec)
        for path, spec in jax.tree_util.tree_leaves_with_path(
            attention.get("position", {}),
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )
    }
    assert found == EXPECTED_AXES[encoding]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sharded_matches_unsharded(encoding):
    config = tiny_config(encoding, causal=True)
    model = LanguageModel(config)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    layout = plan_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), mesh, RULES, seq_len=T
    )
    params = layout.initialize().params
    tokens, pos, segments = model_inputs(batch=4)
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    apply = jax.jit(
        lambda p, t, q, s: model.apply({"params": p}, t, q, s),
        in_shardings=(layout.shardings.params, batch, batch, batch),
    )
    logits = apply(params, tokens, pos, segments)
    host_params = jax.device_get(params)
    expected = model.apply({"params": host_params}, tokens, pos, segments)
    assert len(logits.sharding.device_set) == 8
    # Sharding splits the embed and head contractions into per-device partial
    # sums, which changes float32 rounding by a few U32 per layer. The measured
    # difference on CPU is 1.2e-7 on logits below 0.5, inside the usual 1e-6.
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
