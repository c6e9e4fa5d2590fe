"""Tests for roformer_jax.interop.tf_checkpoint.

Each test writes a TF checkpoint from the weights of a random transformers
`RoFormerForMaskedLM`, with the variable names of the original RoFormer
release (bert4keras, BERT naming, kernels ``[in, out]``). The imported model
is compared with that transformers model at non-padded positions only,
because roformer_jax masks padded queries and transformers does not.
"""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

from roformer_jax.interop import (
    CheckpointFormatError,
    UnsupportedArchitectureError,
    WeightMismatchError,
    build_model,
    load_tf_checkpoint,
)
from roformer_jax.interop.tf_checkpoint import tf_variable_name

TOLERANCE = 1e-5
BATCH, LENGTH, VOCAB, LAYERS = 2, 20, 99, 2

BERT_CONFIG = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "embedding_size": 24,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": LAYERS,
    "type_vocab_size": 2,
    "vocab_size": VOCAB,
}
# Variables that the loader skips: pooler, next-sentence head, optimizer.
SKIPPED_VARIABLES = {
    "bert/pooler/dense/kernel": np.zeros((32, 32), np.float32),
    "bert/pooler/dense/bias": np.zeros((32,), np.float32),
    "cls/seq_relationship/output_weights": np.zeros((2, 32), np.float32),
    "cls/seq_relationship/output_bias": np.zeros((2,), np.float32),
    "bert/encoder/layer_0/attention/self/query/kernel/adam_m": np.zeros(
        (32, 32), np.float32
    ),
    "bert/encoder/layer_0/attention/self/query/kernel/adam_v": np.zeros(
        (32, 32), np.float32
    ),
    "global_step": np.array(1000, np.int64),
}


def max_error_relative_to_max_reference(ours, reference) -> float:
    """Return max |ours - reference| / max |reference| in float64."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def release_names(num_layers: int) -> dict[str, tuple[str, bool]]:
    """Map each TF variable of the release to (transformers name, is kernel)."""
    names = {
        "bert/embeddings/word_embeddings": (
            "roformer.embeddings.word_embeddings.weight",
            False,
        ),
        "bert/embeddings/token_type_embeddings": (
            "roformer.embeddings.token_type_embeddings.weight",
            False,
        ),
        "bert/embeddings/LayerNorm/gamma": (
            "roformer.embeddings.LayerNorm.weight",
            False,
        ),
        "bert/embeddings/LayerNorm/beta": ("roformer.embeddings.LayerNorm.bias", False),
        "bert/encoder/embedding_hidden_mapping_in/kernel": (
            "roformer.embeddings_project.weight",
            True,
        ),
        "bert/encoder/embedding_hidden_mapping_in/bias": (
            "roformer.embeddings_project.bias",
            False,
        ),
        "cls/predictions/transform/dense/kernel": (
            "cls.predictions.transform.dense.weight",
            True,
        ),
        "cls/predictions/transform/dense/bias": (
            "cls.predictions.transform.dense.bias",
            False,
        ),
        "cls/predictions/transform/LayerNorm/gamma": (
            "cls.predictions.transform.LayerNorm.weight",
            False,
        ),
        "cls/predictions/transform/LayerNorm/beta": (
            "cls.predictions.transform.LayerNorm.bias",
            False,
        ),
        "cls/predictions/output_bias": ("cls.predictions.bias", False),
    }
    dense_scopes = [
        ("attention/self/query", "attention.self.query"),
        ("attention/self/key", "attention.self.key"),
        ("attention/self/value", "attention.self.value"),
        ("attention/output/dense", "attention.output.dense"),
        ("intermediate/dense", "intermediate.dense"),
        ("output/dense", "output.dense"),
    ]
    norm_scopes = [
        ("attention/output/LayerNorm", "attention.output.LayerNorm"),
        ("output/LayerNorm", "output.LayerNorm"),
    ]
    for i in range(num_layers):
        tf_layer, hf_layer = f"bert/encoder/layer_{i}/", f"roformer.encoder.layer.{i}."
        for tf_scope, hf_scope in dense_scopes:
            names[f"{tf_layer}{tf_scope}/kernel"] = (
                f"{hf_layer}{hf_scope}.weight",
                True,
            )
            names[f"{tf_layer}{tf_scope}/bias"] = (f"{hf_layer}{hf_scope}.bias", False)
        for tf_scope, hf_scope in norm_scopes:
            names[f"{tf_layer}{tf_scope}/gamma"] = (
                f"{hf_layer}{hf_scope}.weight",
                False,
            )
            names[f"{tf_layer}{tf_scope}/beta"] = (f"{hf_layer}{hf_scope}.bias", False)
    return names


def _randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_positions" in name:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("LayerNorm.weight"):
                parameter.copy_(1 + 0.1 * noise)
            elif parameter.ndim == 1:
                parameter.copy_(0.1 * noise)
            else:
                parameter.copy_(0.05 * noise)


def _release_variables(hf_model) -> dict[str, np.ndarray]:
    state = {name: tensor.numpy() for name, tensor in hf_model.state_dict().items()}
    variables = {}
    for tf_name, (hf_name, is_kernel) in release_names(LAYERS).items():
        array = state[hf_name]
        variables[tf_name] = np.ascontiguousarray(array.T if is_kernel else array)
    return variables


def _write_checkpoint(directory, variables, config=BERT_CONFIG) -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / "bert_model.ckpt")
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[name]) for name in names],
    )
    config_path = directory / "bert_config.json"
    config_path.write_text(json.dumps(config))
    return prefix, str(config_path)


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), np.int32)
    mask[1, 13:] = 0
    token_types = rng.integers(0, 2, (BATCH, LENGTH)).astype(np.int32)
    return tokens, mask, token_types


def _hf_outputs(model, tokens, mask, token_types) -> np.ndarray:
    with torch.no_grad():
        output = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            token_type_ids=torch.tensor(token_types, dtype=torch.long),
        )
    if hasattr(output, "logits"):
        return output.logits.numpy()
    return output.last_hidden_state.numpy()


def _our_outputs(imported, tokens, mask, token_types) -> np.ndarray:
    positions = np.broadcast_to(
        np.arange(tokens.shape[1], dtype=np.int32), tokens.shape
    )
    return np.asarray(
        build_model(imported).apply(
            {"params": imported.params},
            tokens,
            positions,
            mask,
            token_types,
            deterministic=True,
        )
    )


def _error_at_tokens(ours, reference, mask) -> float:
    keep = mask.astype(bool)
    return max_error_relative_to_max_reference(ours[keep], reference[keep])


@pytest.fixture(scope="module")
def hf_masked_lm():
    config = transformers.RoFormerConfig(
        **{key: value for key, value in BERT_CONFIG.items()}
    )
    model = transformers.RoFormerForMaskedLM(config).eval()
    _randomize(model, seed=0)
    return model


@pytest.fixture(scope="module")
def release_checkpoint(hf_masked_lm, tmp_path_factory):
    variables = {**_release_variables(hf_masked_lm), **SKIPPED_VARIABLES}
    return _write_checkpoint(tmp_path_factory.mktemp("release"), variables)


def test_release_names_cover_model(hf_masked_lm):
    # Every weight except the rotary table and the tied decoder has a TF name.
    tied_or_fixed = {
        "roformer.encoder.embed_positions.weight",
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    }
    covered = {hf_name for hf_name, _ in release_names(LAYERS).values()}

    assert covered == set(hf_masked_lm.state_dict()) - tied_or_fixed


@pytest.mark.parametrize(
    "hf_name, tf_name",
    [
        ("embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings"),
        ("embeddings.LayerNorm.bias", "bert/embeddings/LayerNorm/beta"),
        (
            "encoder.layer.11.attention.self.value.weight",
            "bert/encoder/layer_11/attention/self/value/kernel",
        ),
        (
            "encoder.layer.0.attention.output.LayerNorm.weight",
            "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
        ),
        ("encoder.layer.3.output.dense.bias", "bert/encoder/layer_3/output/dense/bias"),
        (
            "embeddings_project.weight",
            "bert/encoder/embedding_hidden_mapping_in/kernel",
        ),
        ("cls.predictions.bias", "cls/predictions/output_bias"),
        (
            "cls.predictions.transform.LayerNorm.bias",
            "cls/predictions/transform/LayerNorm/beta",
        ),
    ],
)
def test_tf_variable_name(hf_name, tf_name):
    assert tf_variable_name(hf_name) == tf_name


def test_masked_lm_matches_transformers(hf_masked_lm, release_checkpoint):
    prefix, config_path = release_checkpoint
    tokens, mask, token_types = _inputs()

    imported = load_tf_checkpoint(prefix, config_path)
    ours = _our_outputs(imported, tokens, mask, token_types)
    reference = _hf_outputs(hf_masked_lm, tokens, mask, token_types)

    assert imported.head == "masked_lm"
    assert imported.model_config.embedding_dim == 24
    assert imported.model_config.hidden_size == 32
    assert not imported.model_config.causal
    assert _error_at_tokens(ours, reference, mask) <= TOLERANCE


def test_skipped_variables_logged(release_checkpoint, caplog):
    prefix, config_path = release_checkpoint

    with caplog.at_level(logging.INFO, logger="roformer_jax.interop.tf_checkpoint"):
        load_tf_checkpoint(prefix, config_path)

    for name in SKIPPED_VARIABLES:
        assert name in caplog.text


def test_encoder_head(hf_masked_lm, release_checkpoint, caplog):
    prefix, config_path = release_checkpoint
    tokens, mask, token_types = _inputs()

    with caplog.at_level(logging.WARNING, logger="roformer_jax.interop.huggingface"):
        imported = load_tf_checkpoint(prefix, config_path, head="encoder")
    ours = _our_outputs(imported, tokens, mask, token_types)
    reference = _hf_outputs(hf_masked_lm.roformer, tokens, mask, token_types)

    assert "cls/predictions/output_bias" in caplog.text
    assert _error_at_tokens(ours, reference, mask) <= TOLERANCE


def test_causal_lm_head(hf_masked_lm, release_checkpoint):
    prefix, config_path = release_checkpoint
    tokens, mask, token_types = _inputs()
    config = transformers.RoFormerConfig(**BERT_CONFIG, is_decoder=True)
    hf_causal = transformers.RoFormerForCausalLM(config).eval()
    hf_causal.load_state_dict(hf_masked_lm.state_dict())

    imported = load_tf_checkpoint(prefix, config_path, head="causal_lm")
    ours = _our_outputs(imported, tokens, mask, token_types)
    reference = _hf_outputs(hf_causal, tokens, mask, token_types)

    assert imported.model_config.causal
    assert _error_at_tokens(ours, reference, mask) <= TOLERANCE


def test_vocab_next_to_config(hf_masked_lm, tmp_path):
    prefix, config_path = _write_checkpoint(tmp_path, _release_variables(hf_masked_lm))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n我\n", encoding="utf-8")

    imported = load_tf_checkpoint(prefix, config_path)

    assert imported.vocab == ("[PAD]", "[UNK]", "我")


def test_missing_variable_named(hf_masked_lm, tmp_path):
    variables = _release_variables(hf_masked_lm)
    name = "bert/encoder/layer_1/output/dense/bias"
    del variables[name]
    prefix, config_path = _write_checkpoint(tmp_path, variables)

    with pytest.raises(WeightMismatchError) as error:
        load_tf_checkpoint(prefix, config_path)

    assert error.value.missing == [name]
    assert name in str(error.value)


def test_unexpected_variable_named(hf_masked_lm, tmp_path):
    variables = _release_variables(hf_masked_lm)
    name = "bert/embeddings/position_embeddings"
    variables[name] = np.zeros((64, 24), np.float32)
    prefix, config_path = _write_checkpoint(tmp_path, variables)

    with pytest.raises(WeightMismatchError) as error:
        load_tf_checkpoint(prefix, config_path)

    assert error.value.unexpected == [name]


def test_shape_mismatch_named(hf_masked_lm, tmp_path):
    variables = _release_variables(hf_masked_lm)
    name = "bert/encoder/layer_0/intermediate/dense/kernel"
    variables[name] = np.zeros((32, 40), np.float32)
    prefix, config_path = _write_checkpoint(tmp_path, variables)

    with pytest.raises(WeightMismatchError) as error:
        load_tf_checkpoint(prefix, config_path)

    assert name in str(error.value)
    assert len(error.value.mismatched) == 1


def test_missing_checkpoint(tmp_path):
    config_path = tmp_path / "bert_config.json"
    config_path.write_text(json.dumps(BERT_CONFIG))

    with pytest.raises(CheckpointFormatError) as error:
        load_tf_checkpoint(tmp_path / "bert_model.ckpt", config_path)

    assert "bert_model.ckpt" in str(error.value)


def test_non_gelu_config(hf_masked_lm, tmp_path):
    config = {**BERT_CONFIG, "hidden_act": "relu"}
    prefix, config_path = _write_checkpoint(
        tmp_path, _release_variables(hf_masked_lm), config
    )

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_tf_checkpoint(prefix, config_path)

    assert "hidden_act='relu'" in str(error.value)


def test_classification_head_rejected(release_checkpoint):
    prefix, config_path = release_checkpoint

    with pytest.raises(ValueError) as error:
        load_tf_checkpoint(prefix, config_path, head="sequence_classification")

    assert "sequence_classification" in str(error.value)
