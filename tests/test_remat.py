"""Rematerialisation (`model.remat`) and mixed precision (`model.dtype`)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import jaxprs_in_params

from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel

V = 37
B, T = 2, 24


def model_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        mlp_dim=48,
        causal=True,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
    )
    values.update(overrides)
    return ModelConfig(**values)


def batch():
    """Two rows: one document, and one of 18 tokens then 6 padding slots."""
    tokens = jax.random.randint(jax.random.PRNGKey(0), (B, T), 0, V)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    segment_ids = jnp.ones((B, T), jnp.int32).at[1, 18:].set(0)
    return tokens, positions, segment_ids


def init_params(config: ModelConfig):
    variables = LanguageModel(config).init(jax.random.PRNGKey(1), *batch())
    return nn.meta.unbox(variables["params"])


def training_loss(config: ModelConfig):
    """Cross-entropy of the next token, with dropout from a fixed key."""
    model = LanguageModel(config)
    tokens, positions, segment_ids = batch()

    def loss(params):
        logits = model.apply(
            {"params": params},
            tokens,
            positions,
            segment_ids,
            deterministic=False,
            rngs={"dropout": jax.random.PRNGKey(4)},
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits[:, :-1], tokens[:, 1:]
        )
        return jnp.mean(losses), logits

    return loss


def all_equations(jaxpr):
    """Yield every equation of a jaxpr and of the jaxprs nested in it."""
    for equation in jaxpr.eqns:
        yield equation
        for inner in jaxprs_in_params(equation.params):
            yield from all_equations(inner)


# Remat.


@pytest.mark.parametrize("remat", ["block", "dots_saveable"])
def test_remat_keeps_parameter_tree(remat):
    """Same paths, shapes and initial values, so old checkpoints load."""
    plain = init_params(model_config())
    rematted = init_params(model_config(remat=remat))
    assert jax.tree.structure(rematted) == jax.tree.structure(plain)
    for path, leaf in jax.tree_util.tree_leaves_with_path(plain):
        other = rematted
        for key in path:
            other = other[key.key]
        np.testing.assert_array_equal(other, leaf, err_msg=jax.tree_util.keystr(path))


def training_gradients(config: ModelConfig, params):
    return jax.jit(jax.grad(training_loss(config), has_aux=True))(params)[0]


@pytest.fixture(scope="module")
def params_and_plain_gradients():
    params = init_params(model_config())
    return params, training_gradients(model_config(), params)


@pytest.mark.parametrize("remat", ["block", "dots_saveable"])
def test_remat_gradients_match_none(remat, params_and_plain_gradients):
    """Training gradients with dropout on: remat replays the same masks."""
    params, expected = params_and_plain_gradients
    grads = training_gradients(model_config(remat=remat), params)
    for path, reference in jax.tree_util.tree_leaves_with_path(expected):
        leaf = grads
        for key in path:
            leaf = leaf[key.key]
        np.testing.assert_allclose(
            leaf,
            reference,
            rtol=1e-5,
            atol=1e-6 * float(np.max(np.abs(reference))) + 1e-9,
            err_msg=jax.tree_util.keystr(path),
        )


@pytest.mark.parametrize(
    "remat, expected_policy",
    [
        ("none", None),
        ("block", None),
        ("dots_saveable", jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    ],
)
def test_remat_wraps_each_block(remat, expected_policy):
    """One checkpoint per block, with the configured save policy."""
    config = model_config(remat=remat)
    params = init_params(config)
    jaxpr = jax.make_jaxpr(training_loss(config))(params)
    checkpoints = [
        equation
        for equation in all_equations(jaxpr.jaxpr)
        if "policy" in equation.params and "prevent_cse" in equation.params
    ]
    expected_count = 0 if remat == "none" else config.num_layers
    assert len(checkpoints) == expected_count
    for equation in checkpoints:
        assert equation.params["policy"] is expected_policy


def test_remat_decoding_matches_full_pass():
    """Cached decoding runs through the rematted blocks unchanged."""
    config = model_config(remat="block", dropout_rate=0.0, attention_dropout_rate=0.0)
    model = LanguageModel(config)
    params = init_params(config)
    tokens, positions, _ = batch()
    tokens, positions = tokens[:1], positions[:1]
    segment_ids = jnp.ones_like(tokens)
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
        np.testing.assert_allclose(
            logits, expected[:, start:end], rtol=1e-5, atol=1e-5, err_msg=str(start)
        )


def test_remat_rejects_unknown_policy():
    with pytest.raises(ValueError, match=r"model.remat='full' is invalid"):
        init_params(model_config(remat="full"))


# Mixed precision.


def bfloat16_jaxpr(**overrides):
    config = model_config(dtype="bfloat16", **overrides)
    params = init_params(config)
    return params, jax.make_jaxpr(training_loss(config))(params)


def test_bfloat16_keeps_float32_parameters_and_gradients():
    config = model_config(dtype="bfloat16", num_layers=1)
    params = init_params(config)
    value_and_grad = jax.value_and_grad(training_loss(config), has_aux=True)
    (loss, logits), grads = jax.jit(value_and_grad)(params)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    assert logits.dtype == jnp.float32
    assert loss.dtype == jnp.float32


@pytest.mark.parametrize("encoding", ["rope", "xpos", "rope_learned"])
def test_bfloat16_rotary_angles_are_float32(encoding):
    """Every sine and cosine in the forward and backward pass is float32."""
    _, jaxpr = bfloat16_jaxpr(position_encoding=encoding)
    trig = [
        equation
        for equation in all_equations(jaxpr.jaxpr)
        if equation.primitive.name in ("sin", "cos")
    ]
    assert trig
    for equation in trig:
        assert equation.invars[0].aval.dtype == jnp.float32, equation
        assert equation.outvars[0].aval.dtype == jnp.float32, equation


def test_bfloat16_matmuls_take_bfloat16_inputs():
    """All matmuls but the tied output projection onto the vocabulary read
    bfloat16 inputs; that one reads float32, so the logits are float32."""
    _, jaxpr = bfloat16_jaxpr()
    matmuls = [
        equation
        for equation in all_equations(jaxpr.jaxpr)
        if equation.primitive.name == "dot_general"
    ]
    float32_inputs = [
        equation
        for equation in matmuls
        if any(var.aval.dtype == jnp.float32 for var in equation.invars)
    ]
    assert len(matmuls) > len(float32_inputs)
    for equation in float32_inputs:
        shapes = {tuple(var.aval.shape) for var in equation.invars}
        shapes |= {tuple(var.aval.shape) for var in equation.outvars}
        assert any(V in shape for shape in shapes), equation


@pytest.mark.parametrize("attention_impl", ["xla", "chunked"])
def test_bfloat16_logits_near_float32(attention_impl):
    """Within bfloat16 rounding (8-bit significand, relative 2**-8 per
    operation) of the float32 model with the same parameters."""
    overrides = dict(
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention_impl=attention_impl,
        attention_chunk_size=8,
    )
    reference_config = model_config(**overrides)
    params = init_params(reference_config)
    reference = LanguageModel(reference_config).apply({"params": params}, *batch())
    config = dataclasses.replace(reference_config, dtype="bfloat16")
    logits = LanguageModel(config).apply({"params": params}, *batch())
    real = np.asarray(batch()[2]) != 0
    error = np.max(np.abs(np.asarray(logits) - np.asarray(reference))[real])
    assert error <= 3e-2 * np.max(np.abs(np.asarray(reference)[real]))
