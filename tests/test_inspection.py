"""Tests of `roformer_jax.inspection.attention_maps`.

The maps are checked two ways: against a float64 numpy recomputation of RoPE
attention from the captured queries and keys, and against the model's own
attention output, which the maps must reproduce when they weight the values.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from roformer_jax import inspection
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel, SequenceClassifier, Transformer

VOCAB = 23
LENGTH = 7
# Row 0: one document of 5 tokens, then 2 padding tokens. Row 1: two packed
# documents of 4 and 3 tokens, with positions that restart at the second.
SEGMENT_IDS = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 2, 2, 2]], np.int32)
POSITIONS = np.array([[0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 0, 1, 2]], np.int32)
TOKENS = np.random.default_rng(0).integers(0, VOCAB, SEGMENT_IDS.shape, np.int32)


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        causal=True,
        pre_layer_norm=True,
        # A low base makes even the slowest pairs turn within 7 positions.
        rotary_base=50.0,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        # A wide init gives peaked, unequal weights that a wrong map would miss.
        initializer_range=0.5,
    )
    values.update(overrides)
    return ModelConfig(**values)


def init_params(model: nn.Module) -> dict:
    params = model.init(
        jax.random.PRNGKey(1),
        jnp.asarray(TOKENS),
        jnp.asarray(POSITIONS),
        jnp.asarray(SEGMENT_IDS),
    )["params"]
    return nn.meta.unbox(params)


def capture(model: nn.Module, params: dict, names: tuple[str, ...]) -> dict:
    """Return the `__call__` outputs of modules with these names, by path."""
    _, state = model.apply(
        {"params": params},
        jnp.asarray(TOKENS),
        jnp.asarray(POSITIONS),
        jnp.asarray(SEGMENT_IDS),
        capture_intermediates=lambda module, method: (
            method == "__call__" and module.name in names
        ),
        mutable=["intermediates"],
    )
    flat = traverse_util.flatten_dict(state["intermediates"])
    return {
        path[:-1]: np.asarray(outputs[0], np.float64) for path, outputs in flat.items()
    }


def reference_mask(causal: bool) -> np.ndarray:
    """Build the [B, T, S] bool mask: same segment, real key and, if causal, s <= t."""
    same = SEGMENT_IDS[:, :, None] == SEGMENT_IDS[:, None, :]
    real_key = SEGMENT_IDS[:, None, :] != 0
    mask = same & real_key
    if causal:
        mask &= np.tril(np.ones((LENGTH, LENGTH), bool))[None]
    return mask


def reference_rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotate features (2i, 2i + 1) of each head by position * base**(-2i/H)."""
    head_dim = x.shape[-1]
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions[:, :, None, None].astype(np.float64) * theta  # [B, T, 1, H/2]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = odd * np.cos(angles) + even * np.sin(angles)
    return out


def reference_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Compute the softmax over allowed keys in float64. Rows with no allowed
    key are 0."""
    logits = np.where(mask, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.where(mask, np.exp(logits - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


@pytest.fixture(scope="module")
def causal_model() -> tuple[LanguageModel, dict]:
    model = LanguageModel(tiny_config())
    return model, init_params(model)


def test_maps_match_float64_rope(causal_model):
    model, params = causal_model
    config = model.config

    maps = inspection.attention_maps(model, params, TOKENS, POSITIONS, SEGMENT_IDS)

    captured = capture(model, params, ("query", "key"))
    mask = reference_mask(causal=True)[:, None]  # [B, 1, T, S]
    for layer in range(config.num_layers):
        prefix = ("transformer", f"layer_{layer}", "attention")
        q = reference_rope(captured[(*prefix, "query")], POSITIONS, config.rotary_base)
        k = reference_rope(captured[(*prefix, "key")], POSITIONS, config.rotary_base)
        logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(config.head_dim)
        expected = reference_softmax(logits, mask)
        # The logits here reach about 12 and carry float32 errors near 1e-6.
        # A softmax weight moves by at most twice the largest logit error.
        np.testing.assert_allclose(
            np.asarray(maps[layer], np.float64), expected, rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("position_encoding", ["rope", "alibi", "t5", "rope_learned"])
def test_maps_reproduce_attention_output(position_encoding, causal_model):
    if position_encoding == "rope":
        model, params = causal_model
    else:
        model = LanguageModel(tiny_config(position_encoding=position_encoding))
        params = init_params(model)
    config = model.config

    maps = np.asarray(
        inspection.attention_maps(model, params, TOKENS, POSITIONS, SEGMENT_IDS),
        np.float64,
    )

    captured = capture(model, params, ("value", "attention"))
    for layer in range(config.num_layers):
        prefix = ("transformer", f"layer_{layer}", "attention")
        # These encodings leave the [B, S, N, H] values unchanged.
        values = captured[(*prefix, "value")]
        output = params["transformer"][f"layer_{layer}"]["attention"]["output"]
        heads = np.einsum("bnts,bsnh->btnh", maps[layer], values)
        projected = np.einsum(
            "btnh,nhd->btd", heads, np.asarray(output["kernel"], np.float64)
        ) + np.asarray(output["bias"], np.float64)
        expected = captured[prefix]  # The attention module's [B, T, D] output.
        # Outputs reach about 15. The model's float32 softmax and two matmuls
        # leave errors up to 4e-6 there (measured on this model and inputs).
        np.testing.assert_allclose(projected, expected, rtol=0, atol=5e-5)


def test_maps_rows_and_mask(causal_model):
    model, params = causal_model

    maps = np.asarray(
        inspection.attention_maps(model, params, TOKENS, POSITIONS, SEGMENT_IDS)
    )
    allowed = reference_mask(causal=True)[None, :, None]  # [1, B, 1, T, S]
    real_query = (SEGMENT_IDS != 0)[None, :, None, :]  # [1, B, 1, T]
    row_sums = maps.sum(axis=-1)

    assert maps.shape == (2, 2, 2, LENGTH, LENGTH)
    assert maps.dtype == np.float32
    assert np.all(np.where(allowed, 0.0, maps) == 0.0)
    np.testing.assert_allclose(
        row_sums[np.broadcast_to(real_query, row_sums.shape)], 1.0, atol=1e-6
    )
    assert np.all(row_sums[np.broadcast_to(~real_query, row_sums.shape)] == 0.0)


def test_maps_encoder_sees_later_keys():
    config = tiny_config(causal=False)
    model = LanguageModel(config)
    params = init_params(model)

    maps = np.asarray(
        inspection.attention_maps(model, params, TOKENS, POSITIONS, SEGMENT_IDS)
    )

    # Query 0 of row 0 attends to keys 1..4 of its document, all after it.
    assert np.all(maps[:, 0, :, 0, 1:5] > 0.0)
    np.testing.assert_allclose(maps[:, 0, :, 0, :5].sum(axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("model_class", ["Transformer", "SequenceClassifier"])
def test_maps_other_models_with_token_types(model_class):
    config = tiny_config(type_vocab_size=2, num_layers=3, causal=False)
    if model_class == "Transformer":
        model = Transformer(config)
    else:
        model = SequenceClassifier(config, num_outputs=3)
    params = init_params(model)
    token_types = np.zeros_like(TOKENS)
    token_types[:, 3:] = 1

    maps = inspection.attention_maps(
        model, params, TOKENS, POSITIONS, SEGMENT_IDS, token_types
    )

    assert maps.shape == (3, 2, 2, LENGTH, LENGTH)


def test_maps_linear_attention_rejected():
    config = tiny_config(attention="linear", linear_feature_map="elu")
    model = LanguageModel(config)
    params = init_params(model)

    with pytest.raises(ValueError, match=r"model.attention='linear'"):
        inspection.attention_maps(model, params, TOKENS, POSITIONS, SEGMENT_IDS)
