"""Tests of the relative position encodings shaw, transformer_xl and deberta.

Each encoding is checked against an independent float64 numpy implementation
of its paper's equations, written here with explicit loops over query i and
key j, using the parameters that the module itself initialised.

Tolerances: U32 = 2**-24 is the unit roundoff of float32. In float32 the
attention layer matches the float64 reference within ATOL32 = 4e-6 absolute
(plus RTOL32 = 1e-5 relative) on outputs up to about 5. Each output value
goes through about a dozen float32 roundings: two projections of length 16,
scores of length 8, the softmax and a weighted sum of length 8. Each rounding
is at most U32 times the magnitudes involved. The scores stay below 6 in
magnitude, so the softmax does not amplify logit errors much. The error is
therefore a few U32 times the output size (about 6e-7 as measured), and
ATOL32 is 48 U32 times the largest output. Tests that need a looser bound
derive it.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import tiny_shakespeare
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.models.layers import SelfAttention, attention_mask
from roformer_jax.positions import deberta, shaw, transformer_xl
from roformer_jax.train import mesh as mesh_lib

U32 = 2.0**-24
RTOL32 = 1e-5
ATOL32 = 4e-6
ENCODINGS = ("shaw", "transformer_xl", "deberta")
B, T, V = 2, 8, 50


def layer_config(encoding: str, **overrides) -> ModelConfig:
    """A one-layer config whose scores are of order 1 to 10.

    The clip distances (3 and 4) are below the position spread of the tests,
    so clipping is exercised.
    """
    values = dict(
        vocab_size=V,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=32,
        position_encoding=encoding,
        initializer_range=0.3,
        relative_clip_distance=3,
        relative_max_distance=4,
    )
    values.update(overrides)
    return ModelConfig(**values)


def model_config(encoding: str, **overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        position_encoding=encoding,
        relative_clip_distance=4,
        relative_max_distance=6,
    )
    values.update(overrides)
    return ModelConfig(**values)


def random_positions(seed: int, batch: int = B, length: int = T, high: int = 40):
    """Unordered int32 positions, so distances differ from index differences."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, size=(batch, length)).astype(np.int32)


def model_inputs(seed: int = 0, batch: int = B, length: int = T):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, V)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    return tokens, positions, jnp.ones_like(tokens)


# Float64 references, one per paper.


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def reference_sinusoid(distance: float, dim: int) -> np.ndarray:
    """Vaswani et al. 2017: R[2f] = sin(t / 10000^(2f/dim)), R[2f+1] = cos."""
    encoding = np.zeros(dim)
    for f in range(dim // 2):
        angle = distance / 10000.0 ** (2 * f / dim)
        encoding[2 * f] = math.sin(angle)
        encoding[2 * f + 1] = math.cos(angle)
    return encoding


def reference_deberta_bucket(i_position: int, j_position: int, k: int) -> int:
    """delta(i, j) of DeBERTa, case by case as the paper defines it."""
    distance = i_position - j_position
    if distance <= -k:
        return 0
    if distance >= k:
        return 2 * k - 1
    return distance + k


def reference_scores(encoding, config, params, q, k, positions):
    """Return float64 `[B, N, T, T]` logits fed to the softmax."""
    batch, length, num_heads, head_dim = q.shape
    scores = np.zeros((batch, num_heads, length, length))
    for b in range(batch):
        for n in range(num_heads):
            for i in range(length):
                for j in range(length):
                    p_i, p_j = int(positions[b, i]), int(positions[b, j])
                    q_i, k_j = q[b, i, n], k[b, j, n]
                    if encoding == "shaw":
                        clip = config.relative_clip_distance
                        bucket = min(max(p_j - p_i, -clip), clip) + clip
                        a_key = f64(params["key_table"])[bucket]
                        score = q_i @ (k_j + a_key) / math.sqrt(head_dim)
                    elif encoding == "transformer_xl":
                        r = reference_sinusoid(p_i - p_j, config.hidden_size)
                        w_r = f64(params["relative_kernel"])[:, n].T @ r  # [H]
                        u = f64(params["content_bias"])[n]
                        v = f64(params["position_bias"])[n]
                        score = q_i @ k_j + q_i @ w_r + u @ k_j + v @ w_r
                        score /= math.sqrt(head_dim)
                    else:
                        table = f64(params["embedding"])
                        span = config.relative_max_distance
                        k_r = table @ f64(params["key_kernel"])[:, n]  # [2k, H]
                        q_r = table @ f64(params["query_kernel"])[:, n]
                        ij = reference_deberta_bucket(p_i, p_j, span)
                        ji = reference_deberta_bucket(p_j, p_i, span)
                        score = q_i @ k_j + q_i @ k_r[ij] + k_j @ q_r[ji]
                        score /= math.sqrt(3 * head_dim)
                    scores[b, n, i, j] = score
    return scores


def reference_softmax(scores, mask):
    """Softmax over keys where mask is True; rows with no key give zeros."""
    if mask is None:
        mask = np.ones(scores.shape, bool)
    mask = np.broadcast_to(mask, scores.shape)
    shifted = np.where(mask, scores, -np.inf)
    row_max = np.max(shifted, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.where(mask, np.exp(shifted - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def reference_attention(encoding, config, params, x, positions, mask):
    """Return the float64 `[B, T, D]` output of one attention layer."""

    def project(name):
        kernel, bias = f64(params[name]["kernel"]), f64(params[name]["bias"])
        return np.einsum("btd,dnh->btnh", x, kernel) + bias

    q, k, v = project("query"), project("key"), project("value")
    position = params["position"]
    weights = reference_softmax(
        reference_scores(encoding, config, position, q, k, positions), mask
    )
    out = np.einsum("bnts,bsnh->btnh", weights, v)
    if encoding == "shaw":
        clip = config.relative_clip_distance
        a_value = f64(position["value_table"])
        for b, n, i, j in np.ndindex(weights.shape):
            bucket = min(max(int(positions[b, j] - positions[b, i]), -clip), clip)
            out[b, i, n] += weights[b, n, i, j] * a_value[bucket + clip]
    output = params["output"]
    return np.einsum("btnh,nhd->btd", out, f64(output["kernel"])) + f64(output["bias"])


# Masks of the reference tests: none, packed documents with left padding, and
# the same with a causal mask.
SEGMENTS = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2, 2, 2]], np.int32)
MASKS = {
    "unmasked": None,
    "segments": np.asarray(attention_mask(layer_config("shaw"), SEGMENTS)),
    "causal": np.asarray(attention_mask(layer_config("shaw", causal=True), SEGMENTS)),
}


def init_layer(config, x, positions, mask):
    layer = SelfAttention(config)
    variables = layer.init(
        jax.random.PRNGKey(0), x, positions, mask, deterministic=True
    )
    return layer, nn.meta.unbox(variables["params"])


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_layer_matches_reference(encoding, mask_name):
    config = layer_config(encoding)
    x = np.random.default_rng(1).normal(size=(B, T, 16)).astype(np.float32)
    positions = random_positions(2)
    mask = MASKS[mask_name]
    layer, params = init_layer(config, x, positions, mask)

    out = layer.apply({"params": params}, x, positions, mask, deterministic=True)

    expected = reference_attention(encoding, config, params, f64(x), positions, mask)
    assert np.abs(expected).max() > 0.1  # The comparison is not between zeros.
    np.testing.assert_allclose(f64(out), expected, rtol=RTOL32, atol=ATOL32)


def test_shaw_value_offsets_matter():
    config = layer_config("shaw")
    x = np.random.default_rng(1).normal(size=(B, T, 16)).astype(np.float32)
    positions = random_positions(2)
    layer, params = init_layer(config, x, positions, None)
    without_values = jax.tree.map(lambda leaf: leaf, params)
    without_values["position"]["value_table"] = jnp.zeros_like(
        params["position"]["value_table"]
    )

    out = layer.apply({"params": params}, x, positions, None, deterministic=True)
    changed = layer.apply(
        {"params": without_values}, x, positions, None, deterministic=True
    )

    assert not np.allclose(out, changed, atol=1e-3)


@pytest.mark.parametrize("encoding", ["shaw", "transformer_xl"])
def test_zero_parameters_match_none(encoding):
    """With all position parameters zero, shaw and transformer_xl add nothing,
    so their layer equals the layer without positions. For shaw this also
    compares the einsum path with the fused one."""
    config = layer_config(encoding)
    x = np.random.default_rng(1).normal(size=(B, T, 16)).astype(np.float32)
    positions = random_positions(2)
    mask = MASKS["causal"]
    layer, params = init_layer(config, x, positions, mask)
    params["position"] = jax.tree.map(jnp.zeros_like, params["position"])
    plain_params = {name: value for name, value in params.items() if name != "position"}

    out = layer.apply({"params": params}, x, positions, mask, deterministic=True)
    plain = SelfAttention(layer_config("none")).apply(
        {"params": plain_params}, x, positions, mask, deterministic=True
    )

    np.testing.assert_allclose(out, plain, rtol=RTOL32, atol=ATOL32)


# Buckets.


def test_shaw_buckets():
    q_positions = np.array([[0, 5, 10]], np.int32)
    k_positions = np.array([[0, 1, 2, 9, 20]], np.int32)

    buckets = shaw.relative_buckets(q_positions, k_positions, 3)

    expected = [
        [
            [min(max(kp - qp, -3), 3) + 3 for kp in k_positions[0]]
            for qp in q_positions[0]
        ]
    ]
    np.testing.assert_array_equal(buckets, expected)


def test_deberta_buckets():
    q_positions = np.array([[0, 5, 10]], np.int32)
    k_positions = np.array([[0, 1, 2, 9, 20]], np.int32)

    buckets = deberta.relative_buckets(q_positions, k_positions, 4)

    expected = [
        [
            [reference_deberta_bucket(qp, kp, 4) for kp in k_positions[0]]
            for qp in q_positions[0]
        ]
    ]
    np.testing.assert_array_equal(buckets, expected)


def test_deberta_buckets_range():
    q_positions = random_positions(3, high=1000)
    k_positions = random_positions(4, high=1000)

    buckets = np.asarray(deberta.relative_buckets(q_positions, k_positions, 4))

    assert buckets.min() == 0
    assert buckets.max() == 7


# Shift invariance and precision.


@pytest.mark.parametrize("shift", [1, 1000, 65_536, 100_000])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_shift_invariant(encoding, shift):
    """Logits are bitwise unchanged when every position moves by `shift`.

    shaw and deberta read positions only through int32 differences, and
    transformer_xl subtracts each row's smallest key position (int32, exact)
    before any float arithmetic. Every float operation therefore gets the
    same inputs, so the tolerance is zero.
    """
    config = model_config(encoding, causal=True)
    tokens, positions, segments = model_inputs()
    model = LanguageModel(config)
    variables = model.init(jax.random.PRNGKey(1), tokens, positions, segments)
    params = nn.meta.unbox(variables)

    logits = model.apply(params, tokens, positions, segments)
    shifted = model.apply(params, tokens, positions + shift, segments)

    np.testing.assert_array_equal(shifted, logits)


def xl_bias(config, q, k, q_positions, k_positions):
    module = transformer_xl.TransformerXLRelative(config)
    variables = module.init(
        jax.random.PRNGKey(0), q, k, k, q_positions, k_positions, method="transform"
    )
    params = nn.meta.unbox(variables["params"])
    _, _, _, bias = module.apply(
        {"params": params}, q, k, k, q_positions, k_positions, method="transform"
    )
    return params, bias


def test_xl_bias_large_span():
    """transformer_xl's bias at positions 1e5 apart matches the reference.

    Per sinusoid frequency f the bias has a term w_sin sin(a) + w_cos cos(a)
    with a = f * (p_i - p_j), which moves by at most |w_f| = hypot(w_sin, w_cos)
    times the error in a. The module computes a as f * p_i - f * p_j from
    float32 angles. With D_R = 16 the exponent 2f/D_R is exact, and the
    power and the product each round once, so each angle is within
    4 * U32 * f * p of exact for 0 <= p <= span (4 rather than 2 leaves room
    for a power that is not correctly rounded), and a is within
    8 * U32 * f * span. sin, cos, the coefficients and the sums add at most
    16 * U32 * |w_f| more, and term (c) rounds like any float32 dot product.
    """
    config = layer_config("transformer_xl")
    rng = np.random.default_rng(5)
    q = rng.normal(size=(B, T, 2, 8)).astype(np.float32)
    k = rng.normal(size=(B, T, 2, 8)).astype(np.float32)
    positions = np.sort(random_positions(6, high=100_000), axis=1)
    positions[:, 0] = 0  # A span of nearly 1e5 in every row.
    span = float(positions.max())
    frequencies = 10000.0 ** (-np.arange(0, 16, 2) / 16)

    params, bias = xl_bias(config, q, k, positions, positions)

    u, v = f64(params["content_bias"]), f64(params["position_bias"])
    kernel = f64(params["relative_kernel"])
    expected = np.zeros((B, 2, T, T))
    max_error = 0.0
    for b, n, i, j in np.ndindex(expected.shape):
        r = reference_sinusoid(positions[b, i] - positions[b, j], 16)
        w = kernel[:, n] @ (f64(q[b, i, n]) + v[n])  # W_R^T (q_i + v), [D_R]
        expected[b, n, i, j] = (w @ r + u[n] @ f64(k[b, j, n])) / math.sqrt(8)
        magnitudes = np.hypot(w[0::2], w[1::2])  # |w_f|
        error = magnitudes @ (8 * U32 * frequencies * span + 16 * U32)
        max_error = max(max_error, error / math.sqrt(8))
    np.testing.assert_allclose(f64(bias), expected, rtol=0, atol=max_error + ATOL32)


# The full model.


@pytest.mark.parametrize("dropout", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_model_logits_finite(encoding, causal, dtype, dropout):
    config = model_config(
        encoding, causal=causal, dtype=dtype, attention_dropout_rate=0.2
    )
    tokens, positions, segments = model_inputs()
    model = LanguageModel(config)
    params = model.init(jax.random.PRNGKey(1), tokens, positions, segments)

    logits = model.apply(
        params,
        tokens,
        positions,
        segments,
        deterministic=not dropout,
        rngs={"dropout": jax.random.PRNGKey(2)},
    )

    assert logits.shape == (B, T, V)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dropout_changes_logits(encoding):
    config = model_config(encoding, dropout_rate=0.0, attention_dropout_rate=0.5)
    tokens, positions, segments = model_inputs()
    model = LanguageModel(config)
    params = model.init(jax.random.PRNGKey(1), tokens, positions, segments)

    logits = model.apply(params, tokens, positions, segments)
    dropped = model.apply(
        params,
        tokens,
        positions,
        segments,
        deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(2)},
    )

    assert not np.allclose(dropped, logits)


POSITION_PARAMETERS = {
    "shaw": {
        "key_table": ((9, 8), (None, "kv")),
        "value_table": ((9, 8), (None, "kv")),
    },
    "transformer_xl": {
        "relative_kernel": ((32, 4, 8), ("embed", "heads", "kv")),
        "content_bias": ((4, 8), ("heads", "kv")),
        "position_bias": ((4, 8), ("heads", "kv")),
    },
    "deberta": {
        "embedding": ((12, 32), (None, "embed")),
        "query_kernel": ((32, 4, 8), ("embed", "heads", "kv")),
        "key_kernel": ((32, 4, 8), ("embed", "heads", "kv")),
    },
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_parameter_shapes_and_axes(encoding):
    config = model_config(encoding)
    boxed = LanguageModel(config).init(jax.random.PRNGKey(1), *model_inputs())
    specs = nn.get_partition_spec(boxed["params"])
    params = nn.meta.unbox(boxed["params"])

    for layer in ("layer_0", "layer_1"):
        position_params = params["transformer"][layer]["attention"]["position"]
        position_specs = specs["transformer"][layer]["attention"]["position"]
        assert set(position_params) == set(POSITION_PARAMETERS[encoding])
        for name, (shape, axes) in POSITION_PARAMETERS[encoding].items():
            assert position_params[name].shape == shape, name
            assert tuple(position_specs[name]) == axes, name


# Sharding.


def sharded_mesh() -> tuple[Mesh, tuple]:
    devices = np.asarray(jax.devices()[:8]).reshape(2, 2, 2)
    rules = mesh_lib.axis_rules(tiny_shakespeare.get_config().mesh)
    return Mesh(devices, mesh_lib.MESH_AXES), rules


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sharded_matches_unsharded(encoding):
    """Under jit on a data=2, fsdp=2, tensor=2 mesh the logits match.

    Sharded matmuls sum their float32 partial products in another order,
    which moves each logit by a few U32 relative per layer, well inside
    RTOL32 and ATOL32.
    """
    config = model_config(encoding, causal=True)
    tokens, positions, segments = model_inputs(batch=4)
    model = LanguageModel(config)
    mesh, rules = sharded_mesh()

    def init(key):
        return model.init(key, tokens, positions, segments)["params"]

    boxed = jax.eval_shape(init, jax.random.PRNGKey(1))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    sharded_init = jax.jit(
        lambda key: nn.meta.unbox(init(key)), out_shardings=nn.meta.unbox(shardings)
    )
    batch = NamedSharding(mesh, PartitionSpec(mesh_lib.BATCH_MESH_AXES))

    with nn.logical_axis_rules(rules):
        params = sharded_init(jax.random.PRNGKey(1))
        inputs = [jax.device_put(x, batch) for x in (tokens, positions, segments)]
        logits = jax.jit(model.apply)({"params": params}, *inputs)

    query = params["transformer"]["layer_0"]["attention"]["query"]["kernel"]
    assert not query.sharding.is_fully_replicated
    position = params["transformer"]["layer_0"]["attention"]["position"]
    for name, (_, axes) in POSITION_PARAMETERS[encoding].items():
        split = "embed" in axes or "heads" in axes
        assert position[name].sharding.is_fully_replicated != split, name
    local_params = jax.tree.map(np.asarray, params)
    expected = model.apply({"params": local_params}, tokens, positions, segments)
    np.testing.assert_allclose(logits, expected, rtol=RTOL32, atol=ATOL32)


INVALID_OPTIONS = {
    "shaw": ({"relative_clip_distance": -1}, "relative_clip_distance=-1"),
    "transformer_xl": ({"hidden_size": 15, "num_heads": 3}, "hidden_size=15"),
    "deberta": ({"relative_max_distance": 0}, "relative_max_distance=0"),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_invalid_option_raises(encoding):
    overrides, message = INVALID_OPTIONS[encoding]
    config = model_config(encoding, **overrides)

    with pytest.raises(ValueError, match=message):
        LanguageModel(config).init(jax.random.PRNGKey(1), *model_inputs())
