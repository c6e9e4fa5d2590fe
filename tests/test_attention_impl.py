"""Softmax attention paths of `model.attention_impl`: chunked against xla and
a float64 reference, chunked memory, the cuDNN and Pallas paths and their CPU
fallback, path selection, and config errors."""

import dataclasses
import logging
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pallas_tpu

from configs import tiny_shakespeare
from roformer_jax.attention import chunked, masks, softmax
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel, layers
from roformer_jax.train.validation import ConfigError, validate_config

V = 37


def relative_error(actual, expected) -> float:
    """Largest absolute difference over the largest magnitude of `expected`."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_trees_close(actual, expected, rtol: float = 1e-5, atol: float = 1e-8):
    """Check each leaf within rtol of its largest magnitude, plus atol.

    The atol floor covers leaves that are zero in exact arithmetic, such as
    the gradient of the key bias, which adds the same logit to a whole row.
    """
    for path, reference in jax.tree_util.tree_leaves_with_path(expected):
        leaf = actual
        for key in path:
            leaf = leaf[key.key]
        error = np.max(np.abs(np.asarray(leaf) - np.asarray(reference)))
        bound = rtol * np.max(np.abs(reference)) + atol
        assert error <= bound, (jax.tree_util.keystr(path), error, bound)


def model_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        mlp_dim=48,
        max_position_embeddings=64,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention_chunk_size=16,
    )
    values.update(overrides)
    return ModelConfig(**values)


def packed_and_padded_batch(length: int = 40):
    """Row 0 packs documents of 15, 20 and 5 tokens, whose positions restart.
    Row 1 is one document of 31 tokens followed by 9 padding slots."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (2, length)).astype(np.int32)
    lengths = [15, 20, length - 35]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
    positions = np.concatenate([np.arange(n) for n in lengths])
    real = 31
    segment_ids = np.stack([segments, np.r_[np.ones(real), np.zeros(length - real)]])
    positions = np.stack([positions, np.r_[np.arange(real), np.zeros(length - real)]])
    tokens[1, real:] = 0
    return (
        jnp.asarray(tokens),
        jnp.asarray(positions, jnp.int32),
        jnp.asarray(segment_ids, jnp.int32),
    )


def init_params(config: ModelConfig, tokens, positions, segment_ids):
    variables = LanguageModel(config).init(
        jax.random.PRNGKey(1), tokens, positions, segment_ids
    )
    return nn.meta.unbox(variables["params"])


def forward(config: ModelConfig, params, batch):
    model = LanguageModel(config)
    return jax.jit(lambda p, *xs: model.apply({"params": p}, *xs))(params, *batch)


def logits_and_grads(config: ModelConfig, params, tokens, positions, segment_ids):
    """Logits and the gradient of a loss that weights every real logit."""
    model = LanguageModel(config)
    weights = jax.random.normal(jax.random.PRNGKey(2), (*tokens.shape, V))
    real = (segment_ids != 0)[..., None]

    def loss(params):
        logits = model.apply({"params": params}, tokens, positions, segment_ids)
        return jnp.sum(jnp.where(real, logits * weights, 0.0)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


# The chunked function against a float64 reference and the xla path.


def reference_attention(q, k, v, q_segment_ids, k_segment_ids, causal):
    """Compute float64 softmax attention with the masks.py rules, in numpy.

    Rows with no visible key are zero.
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    q_segment_ids, k_segment_ids = np.asarray(q_segment_ids), np.asarray(k_segment_ids)
    batch, q_length, heads, head_dim = q.shape
    k_length = k.shape[1]
    out = np.zeros_like(q)
    for b in range(batch):
        for t in range(q_length):
            visible = (k_segment_ids[b] == q_segment_ids[b, t]) & (
                k_segment_ids[b] != 0
            )
            if causal:
                visible &= np.arange(k_length) <= t + (k_length - q_length)
            if not visible.any():
                continue
            for n in range(heads):
                logits = k[b, visible, n] @ q[b, t, n] / np.sqrt(head_dim)
                weights = np.exp(logits - logits.max())
                out[b, t, n] = weights @ v[b, visible, n] / weights.sum()
    return out


def random_qkv(q_length, k_length, seed=0, heads=2, head_dim=8):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (2, q_length, heads, head_dim))
    k = jax.random.normal(keys[1], (2, k_length, heads, head_dim))
    v = jax.random.normal(keys[2], (2, k_length, heads, head_dim))
    return q, k, v


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_chunked_matches_float64_reference(causal, chunk_size):
    """40 tokens (not a multiple of 7, and shorter than 64) with packed and
    padded rows."""
    _, _, segment_ids = packed_and_padded_batch(40)
    q, k, v = random_qkv(40, 40)
    out = chunked.chunked_attention(
        q,
        k,
        v,
        q_segment_ids=segment_ids,
        k_segment_ids=segment_ids,
        causal=causal,
        chunk_size=chunk_size,
    )
    expected = reference_attention(q, k, v, segment_ids, segment_ids, causal)
    assert out.shape == q.shape
    assert relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_chunked_with_more_keys_than_queries(causal):
    """24 queries over 40 keys: causal offsets the diagonal by S - T = 16."""
    q, k, v = random_qkv(24, 40, seed=1)
    k_segment_ids = jnp.ones((2, 40), jnp.int32).at[1, :3].set(0)
    q_segment_ids = jnp.ones((2, 24), jnp.int32)
    out = chunked.chunked_attention(
        q,
        k,
        v,
        q_segment_ids=q_segment_ids,
        k_segment_ids=k_segment_ids,
        causal=causal,
        chunk_size=16,
    )
    expected = reference_attention(q, k, v, q_segment_ids, k_segment_ids, causal)
    assert relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_chunked_gradients_match_xla(causal):
    _, _, segment_ids = packed_and_padded_batch(40)
    q, k, v = random_qkv(40, 40, seed=2)
    cotangent = jax.random.normal(jax.random.PRNGKey(3), q.shape)
    mask = masks.SegmentMask(segment_ids, segment_ids, causal=causal)

    def chunked_loss(q, k, v):
        out = chunked.chunked_attention(
            q,
            k,
            v,
            q_segment_ids=segment_ids,
            k_segment_ids=segment_ids,
            causal=causal,
            chunk_size=16,
        )
        return jnp.sum(out * cotangent)

    def xla_loss(q, k, v):
        out = softmax.fused_attention(q, k, v, mask=mask.dense())
        return jnp.sum(out * cotangent)

    grads = jax.jit(jax.grad(chunked_loss, argnums=(0, 1, 2)))(q, k, v)
    expected = jax.grad(xla_loss, argnums=(0, 1, 2))(q, k, v)
    for name, grad, reference in zip("qkv", grads, expected, strict=True):
        assert relative_error(grad, reference) <= 1e-5, name


def test_chunked_rejects_bad_segment_shape():
    q, k, v = random_qkv(8, 8)
    with pytest.raises(ValueError, match=r"q_segment_ids shape \(2, 7\)"):
        chunked.chunked_attention(
            q,
            k,
            v,
            q_segment_ids=jnp.ones((2, 7), jnp.int32),
            k_segment_ids=jnp.ones((2, 8), jnp.int32),
            causal=False,
        )


# The chunked path in the model.


@pytest.mark.parametrize(
    "encoding, causal",
    [("rope", True), ("rope", False), ("learned", True), ("none", False)],
)
def test_model_chunked_logits_match_xla(encoding, causal):
    """Packed and padded rows, 40 tokens in chunks of 16."""
    batch = packed_and_padded_batch(40)
    config = model_config(position_encoding=encoding, causal=causal, num_layers=1)
    params = init_params(config, *batch)
    expected = forward(dataclasses.replace(config, attention_impl="xla"), params, batch)
    logits = forward(
        dataclasses.replace(config, attention_impl="chunked"), params, batch
    )
    real = np.asarray(batch[2]) != 0
    assert relative_error(np.asarray(logits)[real], np.asarray(expected)[real]) <= 1e-5


def test_model_chunked_gradients_match_xla():
    """Parameter gradients of a causal RoPE model, packed and padded rows."""
    batch = packed_and_padded_batch(40)
    config = model_config(causal=True, num_layers=1)
    params = init_params(config, *batch)
    xla_logits, xla_grads = logits_and_grads(
        dataclasses.replace(config, attention_impl="xla"), params, *batch
    )
    logits, grads = logits_and_grads(
        dataclasses.replace(config, attention_impl="chunked"), params, *batch
    )
    real = np.asarray(batch[2]) != 0
    assert (
        relative_error(np.asarray(logits)[real], np.asarray(xla_logits)[real]) <= 1e-5
    )
    assert_trees_close(grads, xla_grads)


def test_model_chunked_decoding_uses_cache():
    """A chunked causal model decodes through the xla path: the logits of a
    prefill and then single tokens equal one chunked forward pass."""
    config = model_config(attention_impl="chunked", causal=True, num_layers=1)
    model = LanguageModel(config)
    tokens, positions, segment_ids = packed_and_padded_batch(40)
    tokens, positions = tokens[1:, :24], positions[1:, :24]
    segment_ids = jnp.ones_like(tokens)
    params = init_params(config, tokens, positions, segment_ids)
    expected = jax.jit(model.apply)({"params": params}, tokens, positions, segment_ids)
    cache = model.init(
        jax.random.PRNGKey(0), tokens, positions, segment_ids, decode=True
    )["cache"]

    @jax.jit
    def decode_step(cache, tokens, positions, segment_ids):
        return model.apply(
            {"params": params, "cache": cache},
            tokens,
            positions,
            segment_ids,
            decode=True,
            mutable=["cache"],
        )

    for start, end in [(0, 20), (20, 21)]:
        logits, variables = decode_step(
            cache,
            tokens[:, start:end],
            positions[:, start:end],
            segment_ids[:, start:end],
        )
        cache = variables["cache"]
        assert relative_error(logits, expected[:, start:end]) <= 1e-5, start


def test_model_chunked_memory_grows_linearly():
    """Compile a training gradient of a one-layer chunked model at T = 8192
    and 16384. Temporary memory stays far below one T x T float32 score
    matrix, and doubling T roughly doubles it, where T x T would quadruple."""

    def temp_bytes(length: int) -> int:
        config = model_config(
            vocab_size=16,
            hidden_size=16,
            num_layers=1,
            mlp_dim=16,
            causal=True,
            attention_impl="chunked",
            attention_chunk_size=256,
        )
        model = LanguageModel(config)
        small = jnp.ones((1, 8), jnp.int32)
        params = jax.eval_shape(
            lambda: nn.meta.unbox(
                model.init(jax.random.PRNGKey(0), small, small, small)["params"]
            )
        )
        ids = jax.ShapeDtypeStruct((1, length), jnp.int32)

        def loss(params, tokens, positions, segment_ids):
            logits = model.apply({"params": params}, tokens, positions, segment_ids)
            return jnp.mean(logits)

        compiled = jax.jit(jax.grad(loss)).lower(params, ids, ids, ids).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    length = 8192
    small, large = temp_bytes(length), temp_bytes(2 * length)
    score_matrix = length * length * 4
    assert small < score_matrix / 8, small
    assert 1.5 < large / small < 2.5, (small, large)


def test_model_chunked_rejects_bias_encoding():
    config = model_config(attention_impl="chunked", position_encoding="alibi")
    batch = packed_and_padded_batch(40)
    with pytest.raises(ValueError, match=r"position_encoding='alibi'.*'xla'"):
        init_params(config, *batch)


def test_model_chunked_rejects_training_dropout():
    config = model_config(attention_impl="chunked", attention_dropout_rate=0.1)
    batch = packed_and_padded_batch(40)
    params = init_params(config, *batch)
    with pytest.raises(ValueError, match=r"attention_dropout_rate=0.1"):
        LanguageModel(config).apply(
            {"params": params},
            *batch,
            deterministic=False,
            rngs={"dropout": jax.random.PRNGKey(0)},
        )


def test_model_chunked_evaluates_with_dropout_config():
    """Attention dropout configured but not applied (evaluation) runs chunked."""
    batch = packed_and_padded_batch(40)
    config = model_config(attention_dropout_rate=0.1, causal=True)
    params = init_params(config, *batch)
    model = LanguageModel(dataclasses.replace(config, attention_impl="chunked"))
    logits = model.apply({"params": params}, *batch)
    expected = LanguageModel(config).apply({"params": params}, *batch)
    real = np.asarray(batch[2]) != 0
    assert relative_error(np.asarray(logits)[real], np.asarray(expected)[real]) <= 1e-5


# cuDNN and Pallas paths and their CPU fallback.


@pytest.mark.parametrize("implementation", ["cudnn", "pallas"])
def test_fallback_on_cpu_equals_xla(implementation, caplog, monkeypatch):
    """On a CPU both fall back to xla: equal logits, one warning in total."""
    monkeypatch.setattr(layers, "_LOGGED_FALLBACKS", set())
    batch = packed_and_padded_batch(40)
    config = model_config(causal=True)
    params = init_params(config, *batch)
    expected = LanguageModel(dataclasses.replace(config, attention_impl="xla")).apply(
        {"params": params}, *batch
    )
    model = LanguageModel(dataclasses.replace(config, attention_impl=implementation))
    with caplog.at_level(logging.WARNING, logger=layers.__name__):
        logits = model.apply({"params": params}, *batch)
        model.apply({"params": params}, *batch)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    np.testing.assert_array_equal(logits, expected)
    assert len(warnings) == 1, warnings
    assert f"model.attention_impl='{implementation}'" in warnings[0]
    assert "'cpu'" in warnings[0]


def test_pallas_kernel_in_interpret_mode_matches_xla(monkeypatch):
    """The TPU flash kernel, run by the Pallas TPU interpreter on the CPU,
    inside a causal model: logits and gradients equal the xla path's. 40
    tokens are padded to one 128-token block."""
    batch = packed_and_padded_batch(40)
    config = model_config(causal=True, num_layers=1)
    params = init_params(config, *batch)
    expected_logits, expected_grads = logits_and_grads(
        dataclasses.replace(config, attention_impl="xla"), params, *batch
    )
    monkeypatch.setattr(softmax, "current_backend", lambda: "tpu")
    with pallas_tpu.force_tpu_interpret_mode():
        logits, grads = logits_and_grads(
            dataclasses.replace(config, attention_impl="pallas"), params, *batch
        )
    real = np.asarray(batch[2]) != 0
    error = relative_error(np.asarray(logits)[real], np.asarray(expected_logits)[real])
    assert error <= 1e-5
    assert_trees_close(grads, expected_grads)


SELECT_DEFAULTS = dict(
    dtype="bfloat16",
    head_dim=64,
    has_bias=False,
    needs_weights=False,
    dropout=False,
    has_segment_ids=True,
)


@pytest.mark.parametrize(
    "requested, backend, overrides, expected",
    [
        ("auto", "cpu", {}, "xla"),
        ("auto", "gpu", {}, "cudnn"),
        ("auto", "gpu", {"dtype": "float32"}, "xla"),
        ("auto", "gpu", {"head_dim": 12}, "xla"),
        ("auto", "gpu", {"has_bias": True}, "xla"),
        ("auto", "tpu", {}, "pallas"),
        ("auto", "tpu", {"has_bias": True}, "pallas"),
        ("auto", "tpu", {"dropout": True}, "xla"),
        ("auto", "tpu", {"has_segment_ids": False}, "xla"),
        ("chunked", "gpu", {}, "chunked"),
        ("chunked", "cpu", {"has_segment_ids": False}, "xla"),
        ("xla", "gpu", {}, "xla"),
    ],
)
def test_select_implementation_choice(requested, backend, overrides, expected):
    arguments = {**SELECT_DEFAULTS, **overrides}
    chosen, reason = softmax.select_implementation(
        requested, backend=backend, **arguments
    )
    assert chosen == expected
    assert reason is None


@pytest.mark.parametrize(
    "requested, backend, overrides, reason_part",
    [
        ("cudnn", "cpu", {}, "backend is 'cpu'"),
        ("cudnn", "gpu", {"dtype": "float32"}, "float32"),
        ("cudnn", "gpu", {"head_dim": 12}, "head dim 12"),
        ("cudnn", "gpu", {"has_bias": True}, "logit bias"),
        ("cudnn", "gpu", {"needs_weights": True}, "attention weights"),
        ("pallas", "gpu", {}, "backend is 'gpu'"),
        ("pallas", "tpu", {"dropout": True}, "dropout"),
    ],
)
def test_select_implementation_fallback_reason(
    requested, backend, overrides, reason_part
):
    arguments = {**SELECT_DEFAULTS, **overrides}
    chosen, reason = softmax.select_implementation(
        requested, backend=backend, **arguments
    )
    assert chosen == "xla"
    assert reason_part in reason


def test_select_implementation_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"attention_impl='flash'"):
        softmax.select_implementation("flash", backend="cpu", **SELECT_DEFAULTS)


# Config validation.


def validate_model(**model_overrides):
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        for name, value in model_overrides.items():
            config.model[name] = value
    return validate_config(config, device_count=1, vocab_size=V)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention_impl": "flash"}, r"model.attention_impl='flash' is invalid"),
        ({"attention_chunk_size": 0}, r"model.attention_chunk_size=0 is invalid"),
        ({"remat": "full"}, r"model.remat='full' is invalid"),
        (
            {"attention_impl": "chunked", "position_encoding": "t5"},
            r"position_encoding='t5'.*'rope'",
        ),
        (
            {"attention_impl": "chunked", "attention_dropout_rate": 0.1},
            r"attention_dropout_rate=0.1",
        ),
        (
            {
                "attention_impl": "cudnn",
                "attention": "linear",
                "attention_dropout_rate": 0.0,
            },
            r"model.attention_impl='cudnn'.*model.attention='linear'",
        ),
    ],
)
def test_config_rejects_invalid_kernel_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_model(**overrides)


def test_config_accepts_chunked_rope():
    model = validate_model(attention_impl="chunked", remat="dots_saveable")
    assert model.attention_impl == "chunked"
    assert model.remat == "dots_saveable"


# Rotary fusion on the CPU.


def count_loop_fusions(position_encoding: str) -> int:
    config = model_config(position_encoding=position_encoding, causal=True)
    tokens, positions, segment_ids = packed_and_padded_batch(40)
    params = init_params(config, tokens, positions, segment_ids)
    model = LanguageModel(config)
    forward = jax.jit(lambda p, *xs: model.apply({"params": p}, *xs))
    text = forward.lower(params, tokens, positions, segment_ids).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"kind=kLoop", entry))


def test_rotary_adds_no_pass_over_queries_and_keys():
    """XLA on the CPU fuses the rotation of q and k into the fusion that adds
    the projection bias and transposes for the attention matmul, so RoPE adds
    only the one fusion that computes the frequencies, shared by all layers.
    This checks the forward pass of the XLA CPU compiler only."""
    assert count_loop_fusions("rope") - count_loop_fusions("none") <= 1
