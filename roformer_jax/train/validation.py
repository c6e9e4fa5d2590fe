"""Checks on a whole experiment config, run before anything compiles."""

import math

from roformer_jax import positions as position_encodings
from roformer_jax.attention.softmax import IMPLEMENTATIONS
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.layers import (
    CHUNKED_ATTENTION_ENCODINGS,
    LINEAR_ATTENTION_ENCODINGS,
    REMAT_POLICIES,
)
from roformer_jax.positions.rope import validate_rope_options
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.faults import NONFINITE_POLICIES

VALID_DTYPES = ("float32", "bfloat16", "float16")
# The values of `config.task`; `inputs.load_task_data` builds each.
TASK_NAMES = ("causal_lm", "masked_lm", "classification")
TOKENIZER_KINDS = ("wordpiece", "chinese_char", "chinese_word")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the fix."""


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name}={value!r} is invalid; it must be a positive integer."
        )


def _check_mesh_and_batch(config, device_count: int) -> None:
    try:
        shape = mesh_lib.resolve_mesh_shape(config.mesh, device_count)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    sizes = dict(zip(mesh_lib.MESH_AXES, shape, strict=True))
    parallel = math.prod(sizes[axis] for axis in mesh_lib.BATCH_MESH_AXES)
    for name in ("global_batch_size", "eval_batch_size"):
        batch_size = config.data[name]
        _check_positive(f"data.{name}", batch_size)
        if batch_size % parallel:
            raise ConfigError(
                f"data.{name}={batch_size} is not divisible by the {parallel} "
                f"devices of the mesh's data and fsdp axes ({sizes}); use a "
                f"multiple of {parallel}."
            )


def _check_attention(model: ModelConfig) -> None:
    if model.attention not in ("softmax", "linear"):
        raise ConfigError(
            f"model.attention={model.attention!r} is invalid; use 'softmax' or "
            "'linear'."
        )
    if model.attention == "softmax":
        return
    if model.position_encoding not in LINEAR_ATTENTION_ENCODINGS:
        raise ConfigError(
            f"model.attention='linear' with model.position_encoding="
            f"{model.position_encoding!r}: this encoding changes the attention "
            "logits, which linear attention never forms. Use one of "
            f"{list(LINEAR_ATTENTION_ENCODINGS)}, or model.attention='softmax'."
        )
    if model.rope_scaling != "none":
        raise ConfigError(
            f"model.rope_scaling={model.rope_scaling!r} is not supported with "
            "model.attention='linear'; set it to 'none'."
        )
    if model.attention_dropout_rate > 0:
        raise ConfigError(
            f"model.attention_dropout_rate={model.attention_dropout_rate} has no "
            "effect with model.attention='linear', which forms no attention "
            "weights to drop; set it to 0."
        )
    if model.linear_feature_map not in ("favor", "elu"):
        raise ConfigError(
            f"model.linear_feature_map={model.linear_feature_map!r} is invalid; "
            "use 'favor' or 'elu'."
        )
    if model.linear_feature_map == "favor":
        _check_positive("model.favor_num_features", model.favor_num_features)
        if model.position_encoding == "rope" and model.favor_num_features % 2:
            raise ConfigError(
                f"model.favor_num_features={model.favor_num_features} is odd, but "
                "RoPE rotates the features in pairs; use an even number."
            )
        if model.favor_redraw_steps < 0:
            raise ConfigError(
                f"model.favor_redraw_steps={model.favor_redraw_steps} is invalid; "
                "use 0 (never redraw) or a positive number of steps."
            )
    elif model.position_encoding == "rope" and model.head_dim % 2:
        raise ConfigError(
            f"The head dim {model.head_dim} is odd, but RoPE rotates the elu "
            "features in pairs; choose model.hidden_size and model.num_heads "
            "with an even quotient."
        )
    _check_positive("model.linear_chunk_size", model.linear_chunk_size)


def _check_kernel_and_remat(model: ModelConfig) -> None:
    """Check attention_impl, attention_chunk_size and remat."""
    if model.attention_impl not in IMPLEMENTATIONS:
        raise ConfigError(
            f"model.attention_impl={model.attention_impl!r} is invalid; use one "
            f"of {list(IMPLEMENTATIONS)}."
        )
    _check_positive("model.attention_chunk_size", model.attention_chunk_size)
    if model.remat not in REMAT_POLICIES:
        raise ConfigError(
            f"model.remat={model.remat!r} is invalid; use one of "
            f"{list(REMAT_POLICIES)}."
        )
    if model.attention == "linear" and model.attention_impl not in ("auto", "xla"):
        raise ConfigError(
            f"model.attention_impl={model.attention_impl!r} picks a softmax "
            "kernel, but model.attention='linear' never runs one; set "
            "model.attention_impl='auto' or model.attention='softmax'."
        )
    if model.attention != "softmax" or model.attention_impl != "chunked":
        return
    if model.position_encoding not in CHUNKED_ATTENTION_ENCODINGS:
        raise ConfigError(
            "model.attention_impl='chunked' with model.position_encoding="
            f"{model.position_encoding!r}: this encoding adds a T x S logit "
            "bias or reads the attention weights, which the chunked path never "
            f"forms. Use one of {list(CHUNKED_ATTENTION_ENCODINGS)}, or "
            "model.attention_impl='xla'."
        )
    if model.attention_dropout_rate > 0:
        raise ConfigError(
            "model.attention_impl='chunked' has no attention dropout, but "
            f"model.attention_dropout_rate={model.attention_dropout_rate}; set "
            "it to 0, or use model.attention_impl='xla'."
        )


def _check_model(config, model: ModelConfig) -> None:
    names = position_encodings.registered_names()
    if model.position_encoding not in names:
        raise ConfigError(
            f"model.position_encoding={model.position_encoding!r} is unknown; "
            f"valid names are {names}."
        )
    if model.hidden_size % model.num_heads:
        raise ConfigError(
            f"model.hidden_size={model.hidden_size} is not divisible by "
            f"model.num_heads={model.num_heads}."
        )
    if model.dtype not in VALID_DTYPES:
        raise ConfigError(
            f"model.dtype={model.dtype!r} is invalid; use one of {VALID_DTYPES}."
        )
    _check_attention(model)
    _check_kernel_and_remat(model)
    try:
        validate_rope_options(model)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    max_length = position_encodings.get(model.position_encoding)(model).max_length()
    if max_length is not None and config.data.seq_len > max_length:
        raise ConfigError(
            f"data.seq_len={config.data.seq_len} exceeds "
            f"model.max_position_embeddings={max_length} of the "
            f"{model.position_encoding!r} position encoding; raise "
            "model.max_position_embeddings or shorten data.seq_len. When "
            "fine-tuning from a run with a shorter table, also set "
            "finetune.extend_position_embeddings=True to tile it."
        )


def _check_task(config) -> None:
    if config.task not in TASK_NAMES:
        raise ConfigError(
            f"task={config.task!r} is unknown; valid tasks are {list(TASK_NAMES)}."
        )
    if config.task == "causal_lm":
        return
    finetune = config.get("finetune", {})
    if finetune.get("init_workdir") and finetune.get("init_hf_dir"):
        raise ConfigError(
            f"finetune.init_workdir={finetune.init_workdir!r} and "
            f"finetune.init_hf_dir={finetune.init_hf_dir!r} are both set; the "
            "encoder comes from one of them, so unset the other."
        )
    tokenizer = config.tokenizer
    if tokenizer.kind not in TOKENIZER_KINDS:
        raise ConfigError(
            f"tokenizer.kind={tokenizer.kind!r} is invalid; use one of "
            f"{list(TOKENIZER_KINDS)}."
        )
    if not tokenizer.vocab_file:
        _check_positive("tokenizer.vocab_size", tokenizer.vocab_size)
    if config.task == "masked_lm":
        if not 0.0 < config.data.mask_rate < 1.0:
            raise ConfigError(
                f"data.mask_rate={config.data.mask_rate!r} is invalid; it must be "
                "between 0 and 1 (BERT uses 0.15)."
            )
        if config.model.causal:
            raise ConfigError(
                "model.causal=True with task='masked_lm': a masked LM needs a "
                "bidirectional encoder; set --config.model.causal=False."
            )
    if config.task == "classification":
        if not 0.0 < config.data.validation_fraction < 1.0:
            raise ConfigError(
                f"data.validation_fraction={config.data.validation_fraction!r} "
                "is invalid; it must be between 0 and 1."
            )


def validate_config(config, *, device_count: int, vocab_size: int = 1) -> ModelConfig:
    """Raise ConfigError on the first invalid value; return the ModelConfig."""
    _check_task(config)
    train = config.train
    for name in (
        "num_train_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "log_every_steps",
        "max_checkpoints_to_keep",
    ):
        _check_positive(f"train.{name}", train[name])
    _check_positive("data.seq_len", config.data.seq_len)
    policy = train.get("nonfinite_policy", "stop")
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(
            f"train.nonfinite_policy={policy!r} is invalid; use one of "
            f"{list(NONFINITE_POLICIES)}."
        )
    _check_positive(
        "train.max_consecutive_skips", train.get("max_consecutive_skips", 3)
    )
    if not 0 <= config.optim.warmup_steps <= train.num_train_steps:
        raise ConfigError(
            f"optim.warmup_steps={config.optim.warmup_steps} must be between 0 "
            f"and train.num_train_steps={train.num_train_steps}; for a short "
            "run, lower --config.optim.warmup_steps as well."
        )
    if config.optim.decay not in ("cosine", "linear"):
        raise ConfigError(
            f"optim.decay={config.optim.decay!r} is invalid; use 'cosine' or 'linear'."
        )
    try:
        model = ModelConfig.from_config(config.model, vocab_size=vocab_size)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    _check_model(config, model)
    _check_mesh_and_batch(config, device_count)
    return model
