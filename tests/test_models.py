"""Shape, masking and parameter-tree tests of the RoFormer models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roformer_jax import positions
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel

ENCODINGS = positions.registered_names()
B, T, V = 2, 16, 50


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        max_position_embeddings=64,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
    )
    values.update(overrides)
    return ModelConfig(**values)


def inputs(seed=0, batch=B, length=T):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, V)
    pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
    return tokens, pos, jnp.ones_like(tokens)


def init_and_apply(config, tokens, pos, segments, **kwargs):
    model = LanguageModel(config)
    variables = model.init(jax.random.PRNGKey(1), tokens, pos, segments)
    params = nn.meta.unbox(variables["params"])
    return params, model.apply({"params": params}, tokens, pos, segments, **kwargs)


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_logits_shape_and_finite(encoding, causal):
    config = tiny_config(position_encoding=encoding, causal=causal)
    _, logits = init_and_apply(config, *inputs())
    assert logits.shape == (B, T, V)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_bfloat16_compute(encoding, causal):
    config = tiny_config(position_encoding=encoding, causal=causal, dtype="bfloat16")
    params, logits = init_and_apply(config, *inputs())
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert np.all(np.isfinite(logits))
    _, reference = init_and_apply(
        tiny_config(position_encoding=encoding, causal=causal), *inputs()
    )
    np.testing.assert_allclose(logits, reference, atol=0.1)


@pytest.mark.parametrize("pre_layer_norm", [False, True])
def test_dropout_changes_training_output(pre_layer_norm):
    config = tiny_config(pre_layer_norm=pre_layer_norm)
    tokens, pos, segments = inputs()
    params, eval_logits = init_and_apply(config, tokens, pos, segments)
    train_logits = LanguageModel(config).apply(
        {"params": params},
        tokens,
        pos,
        segments,
        deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(3)},
    )
    assert np.all(np.isfinite(train_logits))
    assert not np.allclose(train_logits, eval_logits)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_causal_ignores_future_tokens(encoding):
    config = tiny_config(position_encoding=encoding, causal=True)
    tokens, pos, segments = inputs()
    params, logits = init_and_apply(config, tokens, pos, segments)
    changed = tokens.at[:, T // 2 :].set((tokens[:, T // 2 :] + 1) % V)
    changed_logits = LanguageModel(config).apply(
        {"params": params}, changed, pos, segments
    )
    np.testing.assert_allclose(
        changed_logits[:, : T // 2], logits[:, : T // 2], rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(changed_logits[:, T // 2 :], logits[:, T // 2 :])


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_packed_documents_match_separate(encoding, causal):
    """Two documents packed in one row, positions restarting, give the same
    logits as each document run alone."""
    config = tiny_config(position_encoding=encoding, causal=causal)
    first, second = 6, T - 6
    tokens, _, _ = inputs(batch=1)
    pos = jnp.concatenate([jnp.arange(first), jnp.arange(second)])[None]
    segments = jnp.concatenate([jnp.full(first, 1), jnp.full(second, 2)])[None]
    params, packed = init_and_apply(config, tokens, pos, segments)
    model = LanguageModel(config)
    alone = model.apply(
        {"params": params},
        tokens[:, first:],
        jnp.arange(second)[None],
        jnp.ones((1, second), jnp.int32),
    )
    np.testing.assert_allclose(packed[:, first:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_left_padding_matches_unpadded(encoding):
    config = tiny_config(position_encoding=encoding, causal=True)
    pad = 4
    tokens, pos, segments = inputs(batch=1)
    params, logits = init_and_apply(config, tokens, pos, segments)
    padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), tokens], axis=1)
    padded_pos = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), pos], axis=1)
    padded_segments = jnp.concatenate(
        [jnp.zeros((1, pad), jnp.int32), segments], axis=1
    )
    padded_logits = LanguageModel(config).apply(
        {"params": params}, padded, padded_pos, padded_segments
    )
    np.testing.assert_allclose(padded_logits[:, pad:], logits, rtol=1e-5, atol=1e-5)


def test_rope_adds_no_parameters():
    tokens, pos, segments = inputs()
    rope_params, _ = init_and_apply(
        tiny_config(position_encoding="rope"), tokens, pos, segments
    )
    none_params, _ = init_and_apply(
        tiny_config(position_encoding="none"), tokens, pos, segments
    )
    assert jax.tree.structure(rope_params) == jax.tree.structure(none_params)


def test_rope_output_unchanged_by_bf16_params_cast():
    """Casting parameters to bf16 and back leaves RoPE's frequencies alone:
    the model is as close to the original as the rounded weights allow."""
    config = tiny_config(position_encoding="rope", causal=True)
    tokens, pos, segments = inputs()
    params, logits = init_and_apply(config, tokens, pos, segments)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    rounded_logits = LanguageModel(config).apply(
        {"params": rounded}, tokens, pos, segments
    )
    np.testing.assert_allclose(rounded_logits, logits, atol=0.05)


def test_learned_positions_table_shape():
    params, _ = init_and_apply(tiny_config(position_encoding="learned"), *inputs())
    table = params["transformer"]["embeddings"]["position"]["table"]["embedding"]
    assert table.shape == (64, 32)


def test_embedding_projection_and_token_types():
    config = tiny_config(embedding_size=16, type_vocab_size=2)
    tokens, pos, segments = inputs()
    params, logits = init_and_apply(config, tokens, pos, segments)
    embeddings = params["transformer"]["embeddings"]
    assert embeddings["token"]["embedding"].shape == (V, 16)
    assert embeddings["projection"]["kernel"].shape == (16, 32)
    assert embeddings["token_type"]["embedding"].shape == (2, 16)
    assert logits.shape == (B, T, V)


def test_rotary_value_changes_output():
    tokens, pos, segments = inputs()
    params, plain = init_and_apply(
        tiny_config(rotary_value=False), tokens, pos, segments
    )
    rotated = LanguageModel(tiny_config(rotary_value=True)).apply(
        {"params": params}, tokens, pos, segments
    )
    assert not np.allclose(plain, rotated)


def test_parameters_have_logical_axes():
    config = tiny_config()
    tokens, pos, segments = inputs()
    boxed = LanguageModel(config).init(jax.random.PRNGKey(0), tokens, pos, segments)[
        "params"
    ]
    specs = nn.get_partition_spec(boxed)
    query = specs["transformer"]["layer_0"]["attention"]["query"]["kernel"]
    assert tuple(query) == ("embed", "heads", "kv")
    token = specs["transformer"]["embeddings"]["token"]["embedding"]
    assert tuple(token) == ("vocab", "embed")


def test_unknown_encoding_lists_valid_names():
    with pytest.raises(ValueError, match="rope"):
        positions.get("rotary")


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sharded_logits_match_unsharded(encoding, causal):
    """Parameters and batch sharded over data=2, fsdp=2, tensor=2 of the eight
    fake devices give the unsharded logits, to float32 summation order."""
    from configs import tiny_shakespeare
    from roformer_jax.train import mesh as mesh_lib

    mesh_config = tiny_shakespeare.get_config().mesh
    with mesh_config.unlocked():
        mesh_config.data, mesh_config.fsdp, mesh_config.tensor = 2, 2, 2
    mesh = mesh_lib.make_mesh(mesh_config)
    rules = mesh_lib.axis_rules(mesh_config)
    config = tiny_config(position_encoding=encoding, causal=causal, rotary_grid_width=4)
    tokens, pos, segments = inputs(batch=4)
    model = LanguageModel(config)
    boxed = model.init(jax.random.PRNGKey(1), tokens, pos, segments)["params"]
    params = nn.meta.unbox(boxed)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    sharded_params = jax.device_put(params, shardings)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    sharded_inputs = [
        jax.device_put(x, batch_sharding) for x in (tokens, pos, segments)
    ]
    apply = jax.jit(lambda p, *xs: model.apply({"params": p}, *xs))
    sharded = apply(sharded_params, *sharded_inputs)
    unsharded = model.apply({"params": params}, tokens, pos, segments)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(sharded, unsharded, rtol=1e-5, atol=1e-5)
