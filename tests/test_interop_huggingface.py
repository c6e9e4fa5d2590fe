"""Tests for roformer_jax.interop.huggingface against transformers' RoFormer.

The references are transformers' own PyTorch RoFormer classes (CPU, float32)
with random weights, saved to temporary directories. Outputs are compared
only at non-padded positions, because roformer_jax also masks padded queries
and transformers does not, so the two differ there by design. The error
measure is `max_error_relative_to_max_reference`, bounded by 1e-5.
"""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from roformer_jax.interop import (
    HEADS,
    CheckpointFormatError,
    UnrepresentableConfigError,
    UnsupportedArchitectureError,
    WeightMismatchError,
    build_model,
    load_huggingface,
    save_huggingface,
)
from roformer_jax.interop.huggingface import hf_position_table
from roformer_jax.model_config import ModelConfig

TOLERANCE = 1e-5
BATCH, LENGTH, VOCAB = 3, 24, 99

HF_CLASSES = {
    "encoder": transformers.RoFormerModel,
    "masked_lm": transformers.RoFormerForMaskedLM,
    "sequence_classification": transformers.RoFormerForSequenceClassification,
    "causal_lm": transformers.RoFormerForCausalLM,
}
# (head, num_labels) of each reference model.
HEAD_CASES = {
    "encoder": ("encoder", None),
    "masked_lm": ("masked_lm", None),
    "classification": ("sequence_classification", 3),
    "regression": ("sequence_classification", 1),
    "causal_lm": ("causal_lm", None),
}
# transformers configs: embedding_size != hidden_size, and rotary values.
HF_CONFIGS = {
    "embedding_24": dict(
        embedding_size=24, rotary_value=False, max_position_embeddings=64
    ),
    "rotary_value": dict(rotary_value=True, max_position_embeddings=48),
}


def max_error_relative_to_max_reference(ours, reference) -> float:
    """Return max |ours - reference| / max |reference| in float64."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _hf_config(name: str, head: str, num_labels: int | None):
    extra = {"num_labels": num_labels} if num_labels else {}
    return transformers.RoFormerConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        type_vocab_size=2,
        is_decoder=head == "causal_lm",
        **HF_CONFIGS[name],
        **extra,
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every weight random values, so no mapping hides behind zeros or ones.

    The rotary position table stays, because it is a fixed function.
    """
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


def _hf_model(config_name: str, head: str, num_labels: int | None, seed: int = 0):
    config = _hf_config(config_name, head, num_labels)
    model = HF_CLASSES[head](config).eval()
    _randomize(model, seed)
    return model


def _inputs():
    """Token ids, attention mask with padding in two rows, and token types."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), np.int32)
    mask[1, 15:] = 0
    mask[2, 21:] = 0
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


def _our_outputs(model, params, tokens, mask, token_types) -> np.ndarray:
    positions = np.broadcast_to(
        np.arange(tokens.shape[1], dtype=np.int32), tokens.shape
    )
    # The attention mask doubles as segment ids: 0 is padding.
    return np.asarray(
        model.apply(
            {"params": params}, tokens, positions, mask, token_types, deterministic=True
        )
    )


def _relative_error(ours, reference, mask) -> float:
    if reference.ndim == 3:  # [B, T, ...]: compare non-padded positions only.
        keep = mask.astype(bool)
        return max_error_relative_to_max_reference(ours[keep], reference[keep])
    return max_error_relative_to_max_reference(ours, reference)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Reference models saved as safetensors, keyed by (head case, config)."""
    saved = {}
    for case, (head, num_labels) in HEAD_CASES.items():
        for config_name in HF_CONFIGS:
            model = _hf_model(config_name, head, num_labels)
            directory = tmp_path_factory.mktemp(f"{case}-{config_name}")
            model.save_pretrained(directory)
            saved[case, config_name] = (model, directory)
    return saved


# --- Import ------------------------------------------------------------------


@pytest.mark.parametrize("config_name", list(HF_CONFIGS))
@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_import_matches_transformers(saved_models, case, config_name):
    hf_model, directory = saved_models[case, config_name]
    head, num_labels = HEAD_CASES[case]
    tokens, mask, token_types = _inputs()

    imported = load_huggingface(directory)
    ours = _our_outputs(
        build_model(imported), imported.params, tokens, mask, token_types
    )
    reference = _hf_outputs(hf_model, tokens, mask, token_types)

    assert imported.head == head
    assert imported.num_labels == num_labels
    assert ours.shape == reference.shape
    assert _relative_error(ours, reference, mask) <= TOLERANCE


@pytest.mark.parametrize("config_name", list(HF_CONFIGS))
def test_import_config_fields(saved_models, config_name):
    _, directory = saved_models["causal_lm", config_name]
    hf_config = json.loads((directory / "config.json").read_text())

    config = load_huggingface(directory).model_config

    assert config.vocab_size == VOCAB
    assert config.hidden_size == 32
    assert config.num_layers == 2
    assert config.num_heads == 4
    assert config.mlp_dim == 37
    assert config.embedding_dim == hf_config["embedding_size"]
    assert config.type_vocab_size == 2
    assert config.max_position_embeddings == hf_config["max_position_embeddings"]
    assert config.rotary_value == hf_config["rotary_value"]
    assert config.causal
    assert config.position_encoding == "rope"
    assert config.rotary_layout == "interleaved"
    assert config.rotary_base == 10000.0
    assert config.layer_norm_epsilon == hf_config["layer_norm_eps"]
    assert config.dropout_rate == hf_config["hidden_dropout_prob"]
    assert config.attention_dropout_rate == hf_config["attention_probs_dropout_prob"]
    assert config.initializer_range == hf_config["initializer_range"]


def test_import_pytorch_bin(tmp_path):
    hf_model = _hf_model("embedding_24", "masked_lm", None, seed=3)
    hf_model.save_pretrained(tmp_path, safe_serialization=False)
    tokens, mask, token_types = _inputs()

    imported = load_huggingface(tmp_path)
    ours = _our_outputs(
        build_model(imported), imported.params, tokens, mask, token_types
    )
    reference = _hf_outputs(hf_model, tokens, mask, token_types)

    assert (tmp_path / "pytorch_model.bin").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert _relative_error(ours, reference, mask) <= TOLERANCE


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_import_sharded(tmp_path, saved_models, safe_serialization):
    hf_model, directory = saved_models["masked_lm", "embedding_24"]
    hf_model.save_pretrained(
        tmp_path, safe_serialization=safe_serialization, max_shard_size="20KB"
    )
    index = (
        "model.safetensors.index.json"
        if safe_serialization
        else ("pytorch_model.bin.index.json")
    )

    sharded = load_huggingface(tmp_path)
    whole = load_huggingface(directory)

    assert (tmp_path / index).is_file()
    assert len(list(tmp_path.glob("*-of-*"))) > 1
    assert jax.tree.structure(sharded.params) == jax.tree.structure(whole.params)
    for ours, reference in zip(
        jax.tree.leaves(sharded.params), jax.tree.leaves(whole.params), strict=True
    ):
        np.testing.assert_array_equal(ours, reference)


def test_import_bfloat16_weights(tmp_path):
    hf_model = _hf_model("rotary_value", "encoder", None, seed=4)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf_model.to(torch.float32).save_pretrained(tmp_path / "f32")

    bfloat16 = load_huggingface(tmp_path / "bf16")
    float32 = load_huggingface(tmp_path / "f32")

    for ours, reference in zip(
        jax.tree.leaves(bfloat16.params), jax.tree.leaves(float32.params), strict=True
    ):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, reference)


def test_import_encoder_of_masked_lm(saved_models, caplog):
    hf_model, directory = saved_models["masked_lm", "embedding_24"]
    tokens, mask, token_types = _inputs()

    with caplog.at_level("WARNING", logger="roformer_jax.interop.huggingface"):
        imported = load_huggingface(directory, head="encoder")
    ours = _our_outputs(
        build_model(imported), imported.params, tokens, mask, token_types
    )
    reference = _hf_outputs(hf_model.roformer, tokens, mask, token_types)

    assert imported.head == "encoder"
    assert "lm_head" not in imported.params
    assert "cls.predictions.bias" in caplog.text
    assert _relative_error(ours, reference, mask) <= TOLERANCE


def test_import_reads_vocab(tmp_path):
    hf_model = _hf_model("rotary_value", "encoder", None)
    hf_model.save_pretrained(tmp_path)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "今天", "天气"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")

    assert load_huggingface(tmp_path).vocab == tuple(tokens)


# --- Export ------------------------------------------------------------------

EXPORT_CONFIG = ModelConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=37,
    embedding_size=24,
    type_vocab_size=2,
    max_position_embeddings=48,
    rotary_value=True,
)


def _random_params(model_config: ModelConfig, head: str, num_labels=None, seed=0):
    """Initialise, then add noise to every parameter (biases and scales too)."""
    model = build_model(model_config, head, num_labels)
    tokens = np.zeros((1, 4), np.int32)
    variables = model.init(jax.random.PRNGKey(seed), tokens, tokens, tokens + 1, tokens)
    params = jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: (leaf + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32),
        params,
    )


def _from_pretrained(head: str, directory):
    model, info = HF_CLASSES[head].from_pretrained(directory, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_export_loads_in_transformers(tmp_path, case):
    head, num_labels = HEAD_CASES[case]
    config = EXPORT_CONFIG
    if head == "causal_lm":
        config = ModelConfig(**{**EXPORT_CONFIG.__dict__, "causal": True})
    params = _random_params(config, head, num_labels, seed=1)
    tokens, mask, token_types = _inputs()

    save_huggingface(tmp_path, config, params, head, num_labels=num_labels)
    hf_model, info = _from_pretrained(head, tmp_path)
    reference = _hf_outputs(hf_model, tokens, mask, token_types)
    ours = _our_outputs(
        build_model(config, head, num_labels), params, tokens, mask, token_types
    )

    assert info["missing_keys"] == []
    assert info["unexpected_keys"] == []
    assert info["mismatched_keys"] == []
    assert info["error_msgs"] == []
    assert hf_model.config.is_decoder == (head == "causal_lm")
    assert _relative_error(ours, reference, mask) <= TOLERANCE


def test_export_ties_decoder(tmp_path):
    params = _random_params(EXPORT_CONFIG, "masked_lm", seed=2)

    save_huggingface(tmp_path, EXPORT_CONFIG, params, "masked_lm")
    hf_model, _ = _from_pretrained("masked_lm", tmp_path)

    np.testing.assert_array_equal(
        hf_model.cls.predictions.decoder.weight.detach().numpy(),
        params["transformer"]["embeddings"]["token"]["embedding"],
    )
    np.testing.assert_array_equal(
        hf_model.cls.predictions.decoder.bias.detach().numpy(),
        params["lm_head"]["bias"],
    )


def test_export_position_table_matches_transformers(tmp_path):
    params = _random_params(EXPORT_CONFIG, "encoder", seed=3)
    fresh = transformers.RoFormerModel(_hf_config("rotary_value", "encoder", None))

    save_huggingface(tmp_path, EXPORT_CONFIG, params, "encoder")
    written = safetensors.numpy.load_file(tmp_path / "model.safetensors")

    np.testing.assert_array_equal(
        written["encoder.embed_positions.weight"],
        fresh.encoder.embed_positions.weight.detach().numpy(),
    )


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_export_import_round_trip_exact(tmp_path, case):
    head, num_labels = HEAD_CASES[case]
    config = EXPORT_CONFIG
    if head == "causal_lm":
        config = ModelConfig(**{**EXPORT_CONFIG.__dict__, "causal": True})
    params = _random_params(config, head, num_labels, seed=4)

    save_huggingface(tmp_path, config, params, head, num_labels=num_labels)
    imported = load_huggingface(tmp_path)

    assert imported.model_config == config
    assert imported.head == head
    assert imported.num_labels == num_labels
    assert jax.tree.structure(imported.params) == jax.tree.structure(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        restored = imported.params
        for key in path:
            restored = restored[key.key]
        assert np.array_equal(restored, leaf), jax.tree_util.keystr(path)


def test_export_half_layout(tmp_path):
    config = ModelConfig(**{**EXPORT_CONFIG.__dict__, "rotary_layout": "half"})
    params = _random_params(config, "encoder", seed=5)
    tokens, mask, token_types = _inputs()

    save_huggingface(tmp_path, config, params, "encoder")
    hf_model, _ = _from_pretrained("encoder", tmp_path)
    reference = _hf_outputs(hf_model, tokens, mask, token_types)
    ours = _our_outputs(
        build_model(config, "encoder"), params, tokens, mask, token_types
    )
    reimported = load_huggingface(tmp_path)

    assert _relative_error(ours, reference, mask) <= TOLERANCE
    assert reimported.model_config.rotary_layout == "interleaved"


def test_export_half_layout_needs_permutation(tmp_path):
    # Control for the test above: read as interleaved without the
    # permutation, half-layout weights give different outputs.
    config = ModelConfig(**{**EXPORT_CONFIG.__dict__, "rotary_layout": "half"})
    interleaved = ModelConfig(**{**EXPORT_CONFIG.__dict__})
    params = _random_params(config, "encoder", seed=5)
    tokens, mask, token_types = _inputs()

    save_huggingface(tmp_path, interleaved, params, "encoder")
    hf_model, _ = _from_pretrained("encoder", tmp_path)
    reference = _hf_outputs(hf_model, tokens, mask, token_types)
    ours = _our_outputs(
        build_model(config, "encoder"), params, tokens, mask, token_types
    )

    assert _relative_error(ours, reference, mask) > 1e-3


def test_export_without_token_types(tmp_path):
    config = ModelConfig(**{**EXPORT_CONFIG.__dict__, "type_vocab_size": 0})
    params = _random_params(config, "masked_lm", seed=6)
    tokens, mask, _ = _inputs()
    token_types = np.zeros_like(tokens)

    save_huggingface(tmp_path, config, params, "masked_lm")
    hf_model, info = _from_pretrained("masked_lm", tmp_path)
    reference = _hf_outputs(hf_model, tokens, mask, token_types)
    ours = _our_outputs(
        build_model(config, "masked_lm"), params, tokens, mask, token_types
    )
    reimported = load_huggingface(tmp_path)

    assert info["missing_keys"] == []
    assert hf_model.config.type_vocab_size == 1
    assert not hf_model.roformer.embeddings.token_type_embeddings.weight.any()
    assert _relative_error(ours, reference, mask) <= TOLERANCE
    assert reimported.model_config.type_vocab_size == 0


def test_export_writes_vocab(tmp_path):
    params = _random_params(EXPORT_CONFIG, "encoder", seed=7)
    vocab = ["[PAD]", "[UNK]", "今", "天"]

    save_huggingface(tmp_path, EXPORT_CONFIG, params, "encoder", vocab=vocab)

    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines() == vocab
    assert load_huggingface(tmp_path).vocab == tuple(vocab)


def test_export_accepts_boxed_params(tmp_path):
    model = build_model(EXPORT_CONFIG, "encoder")
    tokens = np.zeros((1, 4), np.int32)
    variables = model.init(jax.random.PRNGKey(0), tokens, tokens, tokens + 1, tokens)

    save_huggingface(tmp_path, EXPORT_CONFIG, variables, "encoder")

    assert load_huggingface(tmp_path).head == "encoder"


# --- Errors ------------------------------------------------------------------


def _edit_weights(directory, edit) -> None:
    path = directory / "model.safetensors"
    weights = safetensors.numpy.load_file(path)
    edit(weights)
    safetensors.numpy.save_file(weights, path, metadata={"format": "pt"})


def _edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def encoder_directory(tmp_path):
    _hf_model("rotary_value", "encoder", None).save_pretrained(tmp_path)
    return tmp_path


def test_missing_weight_named(encoder_directory):
    name = "encoder.layer.1.output.dense.bias"
    _edit_weights(encoder_directory, lambda weights: weights.pop(name))

    with pytest.raises(WeightMismatchError) as error:
        load_huggingface(encoder_directory)

    assert name in str(error.value)
    assert error.value.missing == [name]


def test_unexpected_weight_named(encoder_directory):
    name = "encoder.layer.0.attention.self.rotary.weight"
    _edit_weights(
        encoder_directory,
        lambda weights: weights.update({name: np.zeros((2, 2), np.float32)}),
    )

    with pytest.raises(WeightMismatchError) as error:
        load_huggingface(encoder_directory)

    assert name in str(error.value)
    assert error.value.unexpected == [name]


def test_shape_mismatch_named(encoder_directory):
    name = "encoder.layer.0.intermediate.dense.weight"
    _edit_weights(
        encoder_directory,
        lambda weights: weights.update({name: np.zeros((38, 32), np.float32)}),
    )

    with pytest.raises(WeightMismatchError) as error:
        load_huggingface(encoder_directory)

    message = str(error.value)
    assert name in message
    assert "(37, 32)" in message
    assert "(38, 32)" in message
    assert error.value.mismatched == [(name, (37, 32), (38, 32))]


def test_prefixed_names_in_errors(saved_models, tmp_path):
    hf_model, _ = saved_models["masked_lm", "embedding_24"]
    hf_model.save_pretrained(tmp_path)
    name = "roformer.encoder.layer.0.attention.self.key.weight"
    _edit_weights(tmp_path, lambda weights: weights.pop(name))

    with pytest.raises(WeightMismatchError) as error:
        load_huggingface(tmp_path)

    assert error.value.missing == [name]


def test_missing_head_weights(encoder_directory):
    with pytest.raises(WeightMismatchError) as error:
        load_huggingface(encoder_directory, head="masked_lm")

    assert "cls.predictions.bias" in error.value.missing


def test_unknown_model_type(encoder_directory):
    _edit_config(encoder_directory, model_type="bert")

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(encoder_directory)

    assert "'bert'" in str(error.value)


def test_roformer_v2_config(encoder_directory):
    _edit_config(encoder_directory, norm_type="rms_norm", use_bias=False)

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(encoder_directory)

    assert "RoFormer V2" in str(error.value)
    assert "norm_type='rms_norm'" in str(error.value)


def test_roformer_v2_weights(encoder_directory):
    def strip_norms_and_biases(weights):
        for name in list(weights):
            if ".LayerNorm." in name or name.endswith(".bias"):
                del weights[name]

    _edit_weights(encoder_directory, strip_norms_and_biases)

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(encoder_directory)

    assert "RoFormer V2" in str(error.value)


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_non_gelu_activation(encoder_directory, activation):
    _edit_config(encoder_directory, hidden_act=activation)

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(encoder_directory)

    assert f"hidden_act={activation!r}" in str(error.value)


def test_causal_lm_without_is_decoder(saved_models, tmp_path):
    hf_model, _ = saved_models["causal_lm", "rotary_value"]
    hf_model.save_pretrained(tmp_path)
    _edit_config(tmp_path, is_decoder=False)

    with pytest.raises(CheckpointFormatError) as error:
        load_huggingface(tmp_path)

    assert "is_decoder" in str(error.value)


def test_masked_lm_with_is_decoder(saved_models, tmp_path):
    hf_model, _ = saved_models["masked_lm", "rotary_value"]
    hf_model.save_pretrained(tmp_path)
    _edit_config(tmp_path, is_decoder=True)

    with pytest.raises(CheckpointFormatError) as error:
        load_huggingface(tmp_path)

    assert "is_decoder" in str(error.value)


def test_unknown_architecture_needs_head(encoder_directory):
    _edit_config(encoder_directory, architectures=["RoFormerForTokenClassification"])

    with pytest.raises(CheckpointFormatError) as error:
        load_huggingface(encoder_directory)

    assert "RoFormerForTokenClassification" in str(error.value)
    assert load_huggingface(encoder_directory, head="encoder").head == "encoder"


def test_missing_config_file(tmp_path):
    with pytest.raises(CheckpointFormatError) as error:
        load_huggingface(tmp_path)

    assert "config.json" in str(error.value)


def test_missing_weight_files(encoder_directory):
    (encoder_directory / "model.safetensors").unlink()

    with pytest.raises(CheckpointFormatError) as error:
        load_huggingface(encoder_directory)

    message = str(error.value)
    assert "model.safetensors" in message
    assert "pytorch_model.bin" in message


def test_altered_position_table(encoder_directory):
    name = "encoder.embed_positions.weight"

    def shift(weights):
        weights[name] = weights[name] + 0.01

    _edit_weights(encoder_directory, shift)

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(encoder_directory)

    assert name in str(error.value)


def test_position_table_formula():
    table = hf_position_table(7, 8)
    position, i = 5, 3
    angle = position / 10000 ** (2 * i / 8)

    assert table.shape == (7, 8)
    assert table[position, i] == np.float32(np.sin(angle))
    assert table[position, 4 + i] == np.float32(np.cos(angle))


def test_untied_decoder_rejected(saved_models, tmp_path):
    hf_model, _ = saved_models["masked_lm", "embedding_24"]
    hf_model.save_pretrained(tmp_path)
    name = "cls.predictions.decoder.weight"
    _edit_weights(
        tmp_path,
        lambda weights: weights.update({name: np.ones((VOCAB, 24), np.float32)}),
    )

    with pytest.raises(UnsupportedArchitectureError) as error:
        load_huggingface(tmp_path)

    assert name in str(error.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("position_encoding", "sinusoidal"),
        ("rotary_base", 500000.0),
        ("rotary_dim", 4),
        ("rotary_fraction", 0.5),
        ("pre_layer_norm", True),
        ("attention", "linear"),
        ("rope_scaling", "linear"),
    ],
)
def test_export_rejects_unrepresentable(tmp_path, field, value):
    config = ModelConfig(**{**EXPORT_CONFIG.__dict__, field: value})

    with pytest.raises(UnrepresentableConfigError) as error:
        save_huggingface(tmp_path, config, {}, "encoder")

    assert f"model_config.{field}=" in str(error.value)
    assert not (tmp_path / "config.json").exists()


def test_export_rejects_missing_param(tmp_path):
    params = _random_params(EXPORT_CONFIG, "encoder", seed=8)
    del params["layer_1"]["feed_forward"]["output"]["bias"]

    with pytest.raises(WeightMismatchError) as error:
        save_huggingface(tmp_path, EXPORT_CONFIG, params, "encoder")

    assert error.value.missing == ["layer_1/feed_forward/output/bias"]


def test_export_rejects_head_causal_mismatch(tmp_path):
    params = _random_params(EXPORT_CONFIG, "masked_lm", seed=9)

    with pytest.raises(ValueError) as error:
        save_huggingface(tmp_path, EXPORT_CONFIG, params, "causal_lm")

    assert "causal" in str(error.value)


def test_invalid_head_rejected(encoder_directory):
    with pytest.raises(ValueError) as error:
        load_huggingface(encoder_directory, head="token_classification")

    assert "token_classification" in str(error.value)
    for head in HEADS:
        assert repr(head) in str(error.value)
