"""Config validation: every field of every config file has a rule, values of
the wrong type or out of range raise ConfigError naming the field and the
value, and the config files as written pass.

Validation only reads the config, so no test here builds a model.
"""

import copy
import dataclasses
import functools
import importlib
import math

import ml_collections
import pytest

from configs import enwik8, finetune, mlm_pretrain
from roformer_jax.model_config import ModelConfig
from roformer_jax.train import validation
from roformer_jax.train.validation import (
    ConfigError,
    validate_config,
    validate_suite_config,
)

DEVICE_COUNT = 8  # The fake CPU devices of tests/conftest.py.
SUITE_FILE = "finetune_suite"

# Every config file with the variants its docstring names.
CONFIG_VARIANTS = {
    "tiny_shakespeare": [
        "",
        "smoke",
        "posenc=learned",
        "posenc=sinusoidal",
        "posenc=none",
    ],
    "mlm_pretrain": [
        *(f"size={size}" for size in mlm_pretrain.SIZES),
        "corpus=cail2019_scm",
        "posenc=learned",
        "smoke",
    ],
    "finetune": [
        *(f"task={task}" for task in finetune.TASK_DEFAULTS),
        "task=cail2019_scm,seq_len=1024",
        "size=bert_base,posenc=learned",
        "smoke",
    ],
    "enwik8": [
        *(f"size={size}" for size in enwik8.SIZES),
        "attention=softmax",
        "feature_map=elu",
        "posenc=none",
        "posenc=learned",
        "smoke",
    ],
    "ablation_tiny_shakespeare": ["", "smoke"],
    SUITE_FILE: ["glue", "cail", "glue,smoke", "cail,smoke"],
}
CONFIG_IDS = [
    f"{name}.py:{variant}"
    for name, variants in CONFIG_VARIANTS.items()
    for variant in variants
]


def load(config_id: str) -> ml_collections.ConfigDict:
    name, _, variant = config_id.removesuffix(".py").partition(".py:")
    return importlib.import_module(f"configs.{name}").get_config(variant)


def is_suite(config_id: str) -> bool:
    return config_id.startswith(SUITE_FILE)


def rules_for(config_id: str) -> dict:
    return validation.SUITE_FIELDS if is_suite(config_id) else validation.FIELDS


def validate(config_id: str, config) -> None:
    if is_suite(config_id):
        validate_suite_config(config)
    else:
        validate_config(config, device_count=DEVICE_COUNT)


def leaf_fields(config, rules: dict, prefix: str = ""):
    """Yield (dotted name, value, declared type) of each leaf. A group with a
    rule of its own (a dict of overrides) counts as one leaf."""
    for key in config.keys():
        name = prefix + key
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and name not in rules:
            yield from leaf_fields(value, rules, name + ".")
        else:
            yield name, value, config.get_type(key)


@functools.cache
def config_values(config_id: str) -> dict:
    return load(config_id).to_dict()


def with_value(config_id: str, name: str, value) -> ml_collections.ConfigDict:
    """Return the config with field `name` set to `value`, bypassing the
    type checks that ConfigDict makes on assignment."""
    values = copy.deepcopy(config_values(config_id))
    *groups, key = name.split(".")
    node = values
    for group in groups:
        node = node[group]
    node[key] = value
    return ml_collections.ConfigDict(values)


# The configs as written.


@pytest.mark.parametrize("config_id", CONFIG_IDS)
def test_config_file_passes(config_id):
    config = load(config_id)
    if is_suite(config_id):
        assert validate_suite_config(config) is None
    else:
        model = validate_config(config, device_count=DEVICE_COUNT)
        assert model.hidden_size == config.model.hidden_size


@pytest.mark.parametrize("config_id", CONFIG_IDS)
def test_every_field_has_rule(config_id):
    rules = rules_for(config_id)
    config = load(config_id)
    missing = [name for name, _, _ in leaf_fields(config, rules) if name not in rules]
    assert missing == []


def test_every_model_config_field_has_rule():
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    missing = sorted(
        name
        for name in names - {"vocab_size"}
        if f"model.{name}" not in validation.FIELDS
    )
    assert missing == []


# Wrong types and out-of-range values, one field at a time.


def first_config_of_each_field() -> dict[str, tuple[str, object, type]]:
    """{field: (config id, default value, declared type)}, taking each field
    from the first config that has it."""
    fields = {}
    for config_id in CONFIG_IDS:
        config = load(config_id)
        for name, value, declared in leaf_fields(config, rules_for(config_id)):
            fields.setdefault(name, (config_id, value, declared))
    return fields


FIELDS_BY_CONFIG = first_config_of_each_field()


def wrong_type_values(value, declared: type) -> list:
    """Return values of types that a field with this default rejects."""
    kind = type(value) if value is not None else declared
    # None is a wrong type only for a field whose default is not None.
    none_if_required = [] if value is None else [None]
    if kind is bool:
        return [1, "True", *none_if_required]
    if kind is int:
        return ["8", 8.5, True, *none_if_required]
    if kind is float:
        return ["0.5", True, *none_if_required]
    if kind is str:
        return [7, *none_if_required]
    if kind in (tuple, list):
        return ["text", *none_if_required]
    if kind is ml_collections.ConfigDict:
        return ["text", *none_if_required]
    raise AssertionError(f"No wrong-type values for {kind} (value {value!r}).")


WRONG_TYPE_CASES = [
    pytest.param(config_id, name, bad, id=f"{name}={bad!r}")
    for name, (config_id, value, declared) in FIELDS_BY_CONFIG.items()
    for bad in wrong_type_values(value, declared)
]


@pytest.mark.parametrize(("config_id", "name", "bad"), WRONG_TYPE_CASES)
def test_wrong_type_rejected(config_id, name, bad):
    config = with_value(config_id, name, bad)
    with pytest.raises(ConfigError) as error:
        validate(config_id, config)
    message = str(error.value)
    assert f"{name}={bad!r}" in message


# Values outside each field's range, from the meaning of each field. A
# string field's range is the values the code reads; "" is outside it.
OUT_OF_RANGE = {
    "seed": [-1],
    "task": ["regression"],
    "model.hidden_size": [0, -8],
    "model.num_layers": [0],
    "model.num_heads": [0, 5],  # 5 does not divide hidden_size=192.
    "model.mlp_dim": [0],
    "model.embedding_size": [0],
    "model.type_vocab_size": [-1],
    "model.max_position_embeddings": [0],
    "model.position_encoding": ["rotary", ""],
    "model.rotary_base": [0.0, -10000.0, math.inf],
    "model.rotary_layout": ["pairs"],
    "model.rotary_dim": [0, 15, 256],  # Odd; over the head dim 64.
    "model.layer_norm_epsilon": [0.0],
    "model.dropout_rate": [-0.1, 1.0],
    "model.attention_dropout_rate": [-0.1, 1.0],
    "model.initializer_range": [0.0, math.nan],
    "model.dtype": ["float64"],
    "model.attention": ["flash"],
    "model.linear_feature_map": ["relu"],
    "model.favor_num_features": [0],
    "model.favor_redraw_steps": [-1],
    "model.linear_chunk_size": [0],
    "model.attention_impl": ["flash"],
    "model.attention_chunk_size": [0],
    "model.remat": ["full"],
    "model.relative_num_buckets": [0, 1],
    "model.relative_max_distance": [0],
    "model.relative_clip_distance": [-1],
    "model.fire_mlp_width": [0],
    "model.xpos_scale_base": [0.0],
    "model.rotary_fraction": [0.0, 1.5],
    "model.rotary_grid_width": [0],
    "model.rope_scaling": ["ntk_by_parts"],
    "model.rope_scaling_factor": [0.5],
    "model.rope_original_max_length": [0],
    "model.yarn_beta_fast": [-1.0],
    "model.yarn_beta_slow": [-1.0],
    "model.llama3_low_freq_factor": [0.0],
    "model.llama3_high_freq_factor": [-4.0],
    "data.dataset": ["imagenet", ""],
    "data.seq_len": [0],
    "data.global_batch_size": [0, 12],  # 12 rows do not split over 8 devices.
    "data.eval_batch_size": [0, 12],
    "data.prefetch_batches": [0],
    "data.validation_fraction": [0.0, 1.0],
    "data.mask_rate": [0.0, 1.0],
    "data.split_seed": [-1],
    "data.file_format": ["xlsx"],
    "data.text_columns": [(), ("a", "b", "c"), ("text", "text")],
    "data.label_column": [""],
    "data.label_names": [(), ("pos", "pos")],
    "tokenizer.kind": ["bpe"],
    "tokenizer.vocab_size": [0, 5],  # 5 leaves no room past the special tokens.
    "tokenizer.min_frequency": [0],
    "optim.learning_rate": [0.0, -1e-3],
    "optim.warmup_steps": [-1, 10**6],  # More than train.num_train_steps.
    "optim.decay": ["step"],
    "optim.end_learning_rate_ratio": [-0.1, 1.5],
    "optim.weight_decay": [-0.1],
    "optim.beta1": [-0.1, 1.0],
    "optim.beta2": [1.0],
    "optim.epsilon": [0.0],
    "optim.grad_clip_norm": [-1.0],
    "train.num_train_steps": [0],
    "train.log_every_steps": [0],
    "train.eval_every_steps": [0],
    "train.eval_max_batches": [0],
    "train.checkpoint_every_steps": [0],
    "train.max_checkpoints_to_keep": [0],
    "train.nonfinite_policy": ["ignore"],
    "train.max_consecutive_skips": [0],
    "train.peak_flops_per_second": [0.0],
    "mesh.data": [0, -2, 16],  # 16 is more than the 8 devices.
    "mesh.fsdp": [0, -2],
    "mesh.tensor": [0],
    "mesh.axis_rules": [
        [["batch", "model"]],
        [["sequence", None]],
        [["batch"]],
        [["embed", ["fsdp", "fsdp"]]],
    ],
    "grid.position_encodings": [()],
    "grid.seeds": [(), (-1,), (0, 0)],
    "grid.sizes": [(), ("huge",)],
    "extrapolation.length_multipliers": [(), (0,)],
    "extrapolation.rope_rescalings": [("rope",)],
    "extrapolation.rescaled_length_multipliers": [(0,)],
    "extrapolation.max_eval_tokens": [1, 100],  # 100 < 16 x 128 tokens.
    "extrapolation.eval_batch_size": [0],
    "extrapolation.passkey_trials": [0],
    "extrapolation.passkey_digits": [0],
    "encodings": [(), ("rotary",)],
    "seeds": [(), (-1,)],
    "size": [""],
    "suite": ["mnli"],
    "pretrain_arg": [""],
}
# Groups of overrides: the message names the field inside the group.
OUT_OF_RANGE_ENTRIES = {
    "grid.encoding_overrides": [
        ({"rope_half": {"rotary_layout": "pairs"}}, "rope_half.rotary_layout='pairs'"),
        ({"rope_half": {"hidden_sise": 8}}, "rope_half.hidden_sise=8"),
    ],
    "grid.size_overrides": [({"tiny": {"hidden_size": 0}}, "tiny.hidden_size=0")],
    "pretrain_overrides": [
        ({"train": {"num_train_steps": 0}}, "train.num_train_steps=0"),
        ({"trian": {"num_train_steps": 10}}, "trian="),
    ],
    "runs": [
        ({"sst2": {"arg": ""}}, "sst2="),
        ({"sst2": {"arg": "", "overrides": {}}}, "sst2.arg=''"),
        (
            {"sst2": {"arg": "task=glue/sst2", "overrides": {"data": {"seq_len": 0}}}},
            "sst2.overrides.data.seq_len=0",
        ),
    ],
}
# Fields that accept every value of their type.
UNBOUNDED = {
    "model.rotary_value",
    "model.causal",
    "model.pre_layer_norm",
    "model.rotary_learned_per_head",
    "data.data_dir",
    "data.manual_dir",
    "data.corpus_path",
    "data.validation_path",
    "data.source_file",
    "data.whole_word_masking",
    "data.skip_invalid_rows",
    "data.regression",
    "tokenizer.lowercase",
    "tokenizer.vocab_file",
    "train.tensorboard",
    # Labels outside the grid are allowed; only those in it are evaluated.
    "extrapolation.rescaled_labels",
    "finetune.init_workdir",
    "finetune.init_hf_dir",
    "finetune.extend_position_embeddings",
    "extend_learned_positions",
    "paths.corpus",
    "paths.glue_dir",
    "paths.tfds_dir",
}


def test_range_tables_cover_every_field():
    classified = set(OUT_OF_RANGE) | set(OUT_OF_RANGE_ENTRIES) | UNBOUNDED
    assert sorted(set(FIELDS_BY_CONFIG) - classified) == []


OUT_OF_RANGE_CASES = [
    pytest.param(name, bad, f"{name}={bad!r}", id=f"{name}={bad!r}")
    for name, values in OUT_OF_RANGE.items()
    for bad in values
] + [
    pytest.param(name, bad, f"{name}.{fragment}", id=f"{name}.{fragment}")
    for name, entries in OUT_OF_RANGE_ENTRIES.items()
    for bad, fragment in entries
]


@pytest.mark.parametrize(("name", "bad", "fragment"), OUT_OF_RANGE_CASES)
def test_out_of_range_rejected(name, bad, fragment):
    config_id = FIELDS_BY_CONFIG[name][0]
    config = with_value(config_id, name, bad)
    with pytest.raises(ConfigError) as error:
        validate(config_id, config)
    message = str(error.value)
    assert name in message
    assert fragment in message or repr(bad) in message


# Fields and groups without a rule, and sharding that does not divide.


@pytest.mark.parametrize(
    ("name", "reported"),
    [
        ("model.hidden_sise", "model.hidden_sise=3"),
        ("eval.every_steps", "eval={...}"),  # The whole group is unknown.
        ("epochs", "epochs=3"),
    ],
)
def test_unknown_field_rejected(name, reported):
    config = load("tiny_shakespeare.py:smoke").to_dict()
    *groups, key = name.split(".")
    node = config
    for group in groups:
        node = node.setdefault(group, {})
    node[key] = 3
    with pytest.raises(ConfigError) as error:
        validate_config(ml_collections.ConfigDict(config), device_count=DEVICE_COUNT)
    message = str(error.value)
    assert reported in message
    assert "no rule covers this field" in message


def test_tensor_axis_must_divide_heads():
    config = load("tiny_shakespeare.py:")  # 3 heads.
    with config.unlocked():
        config.mesh.update(data=2, fsdp=1, tensor=4)
    with pytest.raises(ConfigError, match=r"model\.num_heads=3 is not divisible by 4"):
        validate_config(config, device_count=DEVICE_COUNT)


def test_tensor_axis_must_divide_vocabulary():
    config = load("tiny_shakespeare.py:smoke")  # 2 heads, hidden 32, mlp 64.
    with config.unlocked():
        config.mesh.update(data=4, fsdp=1, tensor=2)
    validate_config(config, device_count=DEVICE_COUNT, vocab_size=66)
    with pytest.raises(ConfigError, match=r"vocabulary size=65 is not divisible by 2"):
        validate_config(config, device_count=DEVICE_COUNT, vocab_size=65)


def test_replicated_axis_needs_no_divisibility():
    config = load("tiny_shakespeare.py:")
    with config.unlocked():
        config.mesh.update(data=2, fsdp=1, tensor=4)
        config.mesh.axis_rules = [
            [logical, None if mesh == "tensor" else mesh]
            for logical, mesh in config.mesh.axis_rules
        ]
    model = validate_config(config, device_count=DEVICE_COUNT, vocab_size=65)
    assert model.num_heads == 3
