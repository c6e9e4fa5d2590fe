"""Checks on a whole experiment config, run before anything compiles.

Every field has a `Rule` in `FIELDS` (trainer configs, plus the `grid` and
`extrapolation` groups of the ablation config) or `SUITE_FIELDS` (the
fine-tuning suite config). `validate_config` first checks the type and range
of each field on its own, and rejects a field that has no rule. Then it checks
the constraints between fields. Some ranges are checked by the code that reads
the field, and this module calls that code: the mesh axis sizes by
`mesh.resolve_mesh_shape`, and the RoPE rescaling options by
`positions.rope.validate_rope_options`. Their rules here check the type only.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import ml_collections

from roformer_jax import positions as position_encodings
from roformer_jax import rotary
from roformer_jax.attention.softmax import IMPLEMENTATIONS
from roformer_jax.data.text_classification import FILE_FORMATS
from roformer_jax.data.tokenizers import KINDS as TOKENIZER_KINDS
from roformer_jax.data.tokenizers import SPECIAL_TOKENS
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.layers import (
    CHUNKED_ATTENTION_ENCODINGS,
    LINEAR_ATTENTION_ENCODINGS,
    REMAT_POLICIES,
)
from roformer_jax.positions.rope import validate_rope_options
from roformer_jax.rope_scaling import ROPE_SCALINGS
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.faults import NONFINITE_POLICIES

VALID_DTYPES = ("float32", "bfloat16", "float16")
# The values of `config.task`; `inputs.load_task_data` builds each.
TASK_NAMES = ("causal_lm", "masked_lm", "classification")
DECAY_SCHEDULES = ("cosine", "linear")  # `optim.decay`, see optimizer.py.
SUITE_NAMES = ("glue", "cail")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """The values that one config field accepts."""

    accepts: Callable[[Any], bool]
    allowed: str  # Ends the message "<field>=<value> is invalid; use <allowed>."

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming field `name` unless `value` is accepted."""
        if not self.accepts(value):
            raise ConfigError(f"{name}={value!r} is invalid; use {self.allowed}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """True for a finite int or float; bools are rejected."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict | ml_collections.ConfigDict)


def _plain(value: Any) -> Any:
    """Return a ConfigDict as a dict, whose repr fits on one line."""
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    return value


def _integer(minimum: int) -> Rule:
    text = {0: "a non-negative int", 1: "a positive int"}.get(
        minimum, f"an int of at least {minimum}"
    )
    return Rule(lambda value: _is_int(value) and value >= minimum, text)


def _number(low: float, high: float = math.inf, *, interval: str = "[]") -> Rule:
    """Build the rule for a finite number from `low` to `high`.

    `interval` gives the bracket at each end. "[" or "]" includes the end,
    "(" or ")" excludes it.
    """
    low_ok = (lambda v: v >= low) if interval[0] == "[" else (lambda v: v > low)
    high_ok = (lambda v: v <= high) if interval[1] == "]" else (lambda v: v < high)
    if math.isinf(high):
        text = f"a finite number {'>=' if interval[0] == '[' else '>'} {low:g}"
    else:
        text = f"a number in {interval[0]}{low:g}, {high:g}{interval[1]}"
    return Rule(lambda v: _is_number(v) and low_ok(v) and high_ok(v), text)


def _choice(values: tuple[str, ...]) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in values, f"one of {list(values)}")


def _optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"None or {rule.allowed}")


def _strings(*, min_count: int = 1, max_count: int | None = None) -> Rule:
    """Build the rule for a list or tuple of distinct non-empty strings."""

    def accepts(value: Any) -> bool:
        return (
            _is_sequence(value)
            and min_count <= len(value) <= (max_count or len(value))
            and all(isinstance(item, str) and item for item in value)
            and len(set(value)) == len(value)
        )

    count = f"{min_count} to {max_count}" if max_count else f"at least {min_count}"
    return Rule(accepts, f"a list of {count} distinct non-empty strings")


def _integers(minimum: int) -> Rule:
    """Build the rule for a non-empty list or tuple of distinct ints of at
    least `minimum`."""

    def accepts(value: Any) -> bool:
        return (
            _is_sequence(value)
            and len(value) > 0
            and all(_is_int(item) and item >= minimum for item in value)
            and len(set(value)) == len(value)
        )

    return Rule(accepts, f"a non-empty list of distinct ints >= {minimum}")


BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
# Paths; the code that reads a path takes None or "" as "not set".
PATH = _optional(Rule(lambda v: isinstance(v, str), "a path string"))
# Type-only rules, for fields whose range the code that reads them checks.
INT = Rule(_is_int, "an int")
NUMBER = Rule(_is_number, "a finite number")
MAPPING = Rule(_is_mapping, "a dict of fields")
POSITIVE = _integer(1)
COUNT = _integer(0)
FRACTION = _number(0.0, 1.0, interval="()")
RATE = _number(0.0, 1.0, interval="[)")  # Dropout rates and Adam betas.

# Trainer config fields, and the `grid` and `extrapolation` groups that only
# the ablation runner reads. Every ModelConfig field but vocab_size has a
# `model.` rule.
FIELDS: dict[str, Rule] = {
    "seed": COUNT,
    "task": _choice(TASK_NAMES),
    "model.hidden_size": POSITIVE,
    "model.num_layers": POSITIVE,
    "model.num_heads": POSITIVE,
    "model.mlp_dim": POSITIVE,
    "model.embedding_size": _optional(POSITIVE),
    "model.type_vocab_size": COUNT,
    "model.max_position_embeddings": POSITIVE,
    "model.position_encoding": TEXT,  # `_check_model` checks the name.
    "model.rotary_base": _number(0.0, interval="()"),
    "model.rotary_layout": _choice(rotary.LAYOUTS),
    "model.rotary_dim": _optional(
        Rule(lambda v: _is_int(v) and v >= 2 and v % 2 == 0, "an even int >= 2")
    ),
    "model.rotary_value": BOOL,
    "model.causal": BOOL,
    "model.pre_layer_norm": BOOL,
    "model.layer_norm_epsilon": _number(0.0, interval="()"),
    "model.dropout_rate": RATE,
    "model.attention_dropout_rate": RATE,
    "model.initializer_range": _number(0.0, interval="()"),
    "model.dtype": _choice(VALID_DTYPES),
    "model.attention": _choice(("softmax", "linear")),
    "model.linear_feature_map": _choice(("favor", "elu")),
    "model.favor_num_features": POSITIVE,
    "model.favor_redraw_steps": COUNT,
    "model.linear_chunk_size": POSITIVE,
    "model.attention_impl": _choice(IMPLEMENTATIONS),
    "model.attention_chunk_size": POSITIVE,
    "model.remat": _choice(REMAT_POLICIES),
    "model.relative_num_buckets": _integer(2),
    "model.relative_max_distance": POSITIVE,
    "model.relative_clip_distance": COUNT,
    "model.fire_mlp_width": POSITIVE,
    "model.xpos_scale_base": _number(0.0, interval="()"),
    "model.rotary_fraction": NUMBER,  # Range: validate_rope_options.
    "model.rotary_learned_per_head": BOOL,
    "model.rotary_grid_width": POSITIVE,
    "model.rope_scaling": _choice(ROPE_SCALINGS),
    "model.rope_scaling_factor": NUMBER,  # Range: validate_rope_options.
    "model.rope_original_max_length": INT,  # Range: validate_rope_options.
    "model.yarn_beta_fast": _number(0.0),
    "model.yarn_beta_slow": _number(0.0),
    "model.llama3_low_freq_factor": _number(0.0, interval="()"),
    "model.llama3_high_freq_factor": _number(0.0, interval="()"),
    "data.dataset": TEXT,  # `_check_dataset` checks it against the task.
    "data.data_dir": PATH,
    "data.manual_dir": PATH,
    "data.corpus_path": PATH,
    "data.validation_path": PATH,
    "data.source_file": PATH,
    "data.seq_len": POSITIVE,
    "data.global_batch_size": POSITIVE,
    "data.eval_batch_size": POSITIVE,
    "data.prefetch_batches": POSITIVE,
    "data.validation_fraction": FRACTION,
    "data.mask_rate": FRACTION,
    "data.whole_word_masking": BOOL,
    "data.split_seed": COUNT,
    "data.skip_invalid_rows": BOOL,
    "data.file_format": _optional(
        Rule(
            lambda v: isinstance(v, str) and v.lower() in FILE_FORMATS,
            f"one of {list(FILE_FORMATS)}",
        )
    ),
    "data.text_columns": _strings(max_count=2),
    "data.label_column": TEXT,
    "data.label_names": _optional(_strings()),
    "data.regression": BOOL,
    "tokenizer.kind": _choice(TOKENIZER_KINDS),
    "tokenizer.lowercase": BOOL,
    "tokenizer.vocab_size": _integer(len(SPECIAL_TOKENS) + 1),
    "tokenizer.min_frequency": POSITIVE,
    "tokenizer.vocab_file": PATH,
    "optim.learning_rate": _number(0.0, interval="()"),
    "optim.warmup_steps": COUNT,
    "optim.decay": _choice(DECAY_SCHEDULES),
    "optim.end_learning_rate_ratio": _number(0.0, 1.0),
    "optim.weight_decay": _number(0.0),
    "optim.beta1": RATE,
    "optim.beta2": RATE,
    "optim.epsilon": _number(0.0, interval="()"),
    "optim.grad_clip_norm": _number(0.0),
    "train.num_train_steps": POSITIVE,
    "train.log_every_steps": POSITIVE,
    "train.eval_every_steps": POSITIVE,
    "train.eval_max_batches": _optional(POSITIVE),
    "train.checkpoint_every_steps": POSITIVE,
    "train.max_checkpoints_to_keep": POSITIVE,
    "train.nonfinite_policy": _choice(NONFINITE_POLICIES),
    "train.max_consecutive_skips": POSITIVE,
    "train.tensorboard": BOOL,
    "train.peak_flops_per_second": _optional(_number(0.0, interval="()")),
    "mesh.data": INT,  # Range: mesh.resolve_mesh_shape.
    "mesh.fsdp": INT,
    "mesh.tensor": INT,
    "mesh.axis_rules": Rule(_is_sequence, "a list of [logical axis, mesh axes] pairs"),
    "finetune.init_workdir": PATH,
    "finetune.init_hf_dir": PATH,
    "finetune.extend_position_embeddings": BOOL,
    "grid.position_encodings": _strings(),
    "grid.seeds": _integers(0),
    "grid.encoding_overrides": MAPPING,  # Entries: `_check_model_overrides`.
    "grid.sizes": _strings(),
    "grid.size_overrides": MAPPING,
    "extrapolation.length_multipliers": _integers(1),
    "extrapolation.rope_rescalings": Rule(
        lambda v: _is_sequence(v) and all(name in ROPE_SCALINGS for name in v),
        f"a list of names in {list(ROPE_SCALINGS)}",
    ),
    "extrapolation.rescaled_length_multipliers": _integers(1),
    "extrapolation.rescaled_labels": _strings(min_count=0),
    "extrapolation.max_eval_tokens": _integer(2),
    "extrapolation.eval_batch_size": POSITIVE,
    "extrapolation.passkey_trials": POSITIVE,
    "extrapolation.passkey_digits": POSITIVE,
}

# The fine-tuning suite config (experiments/finetune_suite.py). Each run it
# starts gets a trainer config that `validate_config` checks.
SUITE_FIELDS: dict[str, Rule] = {
    "encodings": _strings(),  # `validate_suite_config` checks the names.
    "seeds": _integers(0),
    "size": TEXT,  # configs/mlm_pretrain.py checks it against its SIZES.
    "extend_learned_positions": BOOL,
    "paths.corpus": PATH,
    "paths.glue_dir": PATH,
    "paths.tfds_dir": PATH,
    "suite": _choice(SUITE_NAMES),
    "pretrain_arg": TEXT,
    "pretrain_overrides": MAPPING,  # {group: {field: value}} of FIELDS.
    "runs": MAPPING,  # {label: {"arg": str, "overrides": {group: {...}}}}.
}


def _check_fields(config, rules: dict[str, Rule], prefix: str = "") -> None:
    """Check every field of `config` against its rule in `rules`.

    Raises:
      ConfigError: naming the first field whose value the rule rejects, or a
        field or group that has no rule.
    """
    for key, value in config.items():
        name = prefix + key
        if name in rules:
            rules[name].check(name, value)
            continue
        is_group = any(field.startswith(name + ".") for field in rules)
        if is_group and _is_mapping(value):
            _check_fields(value, rules, name + ".")
            continue
        if is_group:
            raise ConfigError(f"{name}={value!r} is invalid; use a group of fields.")
        siblings = {
            field.removeprefix(prefix).split(".")[0]
            for field in rules
            if field.startswith(prefix)
        }
        value_text = "{...}" if _is_mapping(value) else repr(value)
        raise ConfigError(
            f"{name}={value_text} is invalid; no rule covers this field. Fix the "
            f"name (valid names here are {sorted(siblings)}), or give a new "
            "field a Rule in FIELDS of roformer_jax.train.validation."
        )


def _check_overrides(name: str, overrides, group_rules: dict[str, Rule]) -> None:
    """Check `{field: value}` overrides of one group against its rules."""
    for field, value in overrides.items():
        if field not in group_rules:
            raise ConfigError(
                f"{name}.{field}={value!r} is invalid; {field!r} is not a field "
                f"of this group, whose fields are {sorted(group_rules)}."
            )
        group_rules[field].check(f"{name}.{field}", value)


def _group_rules(group: str) -> dict[str, Rule]:
    prefix = group + "."
    return {
        name.removeprefix(prefix): rule
        for name, rule in FIELDS.items()
        if name.startswith(prefix)
    }


def _check_task(config) -> None:
    if config.task == "causal_lm":
        return
    if "tokenizer" not in config:
        raise ConfigError(
            f"tokenizer is missing; task={config.task!r} needs a tokenizer "
            "group (tokenizer.kind, vocab_size, ...). Build it as "
            "configs/mlm_pretrain.py does."
        )
    finetune = config.get("finetune", {})
    if finetune.get("init_workdir") and finetune.get("init_hf_dir"):
        raise ConfigError(
            f"finetune.init_workdir={finetune.init_workdir!r} and "
            f"finetune.init_hf_dir={finetune.init_hf_dir!r} are both set; the "
            "encoder comes from one of them, so unset the other."
        )


def _check_dataset(config) -> None:
    # Imported here because the data phase modules import ConfigError from
    # this module.
    from roformer_jax.train import inputs, text_inputs

    names = {
        "causal_lm": inputs.DATASETS,
        "masked_lm": text_inputs.MASKED_LM_DATASETS,
        "classification": text_inputs.CLASSIFICATION_DATASETS,
    }[config.task]
    if config.data.dataset not in names:
        raise ConfigError(
            f"data.dataset={config.data.dataset!r} is invalid; task="
            f"{config.task!r} reads one of {list(names)}."
        )


def _check_attention(model: ModelConfig) -> None:
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
    if model.linear_feature_map == "favor":
        if model.position_encoding == "rope" and model.favor_num_features % 2:
            raise ConfigError(
                f"model.favor_num_features={model.favor_num_features} is odd, but "
                "RoPE rotates the features in pairs; use an even number."
            )
    elif model.position_encoding == "rope" and model.head_dim % 2:
        raise ConfigError(
            f"The head dim {model.head_dim} is odd, but RoPE rotates the elu "
            "features in pairs; choose model.hidden_size and model.num_heads "
            "with an even quotient."
        )


def _check_kernel(model: ModelConfig) -> None:
    """Check that attention_impl fits the attention and position encoding."""
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
            f"model.num_heads={model.num_heads}; choose a number of heads that "
            "divides the hidden size."
        )
    _check_attention(model)
    _check_kernel(model)
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


def _check_axis_rules(rules) -> None:
    """Check that each rule maps a logical axis to None or mesh axes."""
    for index, rule in enumerate(rules):
        problem = None
        if not _is_sequence(rule) or len(rule) != 2:
            problem = f"rule {index}, {rule!r}, is not a [logical axis, mesh axes] pair"
        elif rule[0] not in mesh_lib.LOGICAL_AXES:
            problem = (
                f"rule {index} names the logical axis {rule[0]!r}; use one of "
                f"{list(mesh_lib.LOGICAL_AXES)}"
            )
        elif rule[1] is not None:
            targets = rule[1] if _is_sequence(rule[1]) else [rule[1]]
            known = targets and all(axis in mesh_lib.MESH_AXES for axis in targets)
            if not known or len(set(targets)) != len(targets):
                problem = (
                    f"rule {index} maps {rule[0]!r} to {rule[1]!r}; map it to "
                    f"None (replicated), a mesh axis in {list(mesh_lib.MESH_AXES)} "
                    "or a list of distinct mesh axes"
                )
        if problem:
            raise ConfigError(f"mesh.axis_rules={rules!r} is invalid; {problem}.")


def _sharded_sizes(config, model: ModelConfig, vocab_size: int) -> dict:
    """Return the sizes of the array dimensions that carry each logical
    axis, as {logical axis: {field name: size}}."""
    sizes = {
        "batch": {
            "data.global_batch_size": config.data.global_batch_size,
            "data.eval_batch_size": config.data.eval_batch_size,
        },
        "length": {"data.seq_len": config.data.seq_len},
        "embed": {"model.hidden_size": model.hidden_size},
        "heads": {"model.num_heads": model.num_heads},
        "kv": {"model.hidden_size // model.num_heads": model.head_dim},
        "mlp": {"model.mlp_dim": model.mlp_dim},
        "vocab": {},
    }
    if model.embedding_size is not None:
        sizes["embed"]["model.embedding_size"] = model.embedding_size
    if config.task == "classification":
        # The classification head's hidden layer is D wide and sharded as mlp.
        sizes["mlp"]["model.hidden_size"] = model.hidden_size
    if vocab_size > 1:  # 1 stands for "not known yet".
        sizes["vocab"]["the vocabulary size"] = vocab_size
    return sizes


def _check_mesh(config, model: ModelConfig, device_count: int, vocab_size: int):
    """Check the mesh shape, the axis rules, and that each sharded dimension
    splits evenly over its mesh axes, as jax requires."""
    try:
        shape = mesh_lib.resolve_mesh_shape(config.mesh, device_count)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    mesh_sizes = dict(zip(mesh_lib.MESH_AXES, shape, strict=True))
    parallel = math.prod(mesh_sizes[axis] for axis in mesh_lib.BATCH_MESH_AXES)
    for name in ("global_batch_size", "eval_batch_size"):
        batch_size = config.data[name]
        if batch_size % parallel:
            raise ConfigError(
                f"data.{name}={batch_size} is not divisible by the {parallel} "
                f"devices of the mesh's data and fsdp axes ({mesh_sizes}); use a "
                f"multiple of {parallel}."
            )
    _check_axis_rules(config.mesh.axis_rules)
    sizes = _sharded_sizes(config, model, vocab_size)
    seen = set()
    for logical, target in config.mesh.axis_rules:
        # Flax takes the first rule of an axis whose mesh axes no other
        # dimension of the array uses. Only that first rule is checked here.
        if logical in seen or target is None:
            continue
        seen.add(logical)
        axes = tuple(target) if _is_sequence(target) else (target,)
        split = math.prod(mesh_sizes[axis] for axis in axes)
        for field, size in sizes[logical].items():
            if size % split:
                raise ConfigError(
                    f"{field}={size} is not divisible by {split}, the devices of "
                    f"mesh axes {list(axes)} that mesh.axis_rules shards the "
                    f"{logical!r} axis over; use a multiple of {split}, or map "
                    f"{logical!r} to other mesh axes or None."
                )


def _check_ablation(config) -> None:
    """Check the grid and extrapolation groups of an ablation config."""
    grid = config.grid
    for group in ("encoding_overrides", "size_overrides"):
        for label, overrides in grid[group].items():
            MAPPING.check(f"grid.{group}.{label}", overrides)
            _check_overrides(f"grid.{group}.{label}", overrides, _group_rules("model"))
    missing = [size for size in grid.sizes if size not in grid.size_overrides]
    if missing:
        raise ConfigError(
            f"grid.sizes={grid.sizes!r} is invalid; {missing} have no entry in "
            f"grid.size_overrides, which defines {sorted(grid.size_overrides)}."
        )
    if "extrapolation" not in config:
        return
    extrapolation = config.extrapolation
    # Labels outside the grid are allowed: a grid narrowed on the command
    # line keeps the default rescaled labels, and only those in it run.
    multipliers = (
        *extrapolation.length_multipliers,
        *extrapolation.rescaled_length_multipliers,
    )
    longest = max(multipliers) * config.data.seq_len
    if extrapolation.max_eval_tokens <= longest:
        raise ConfigError(
            f"extrapolation.max_eval_tokens={extrapolation.max_eval_tokens} is "
            f"invalid; the longest evaluation window has {longest} tokens "
            f"({max(multipliers)} x data.seq_len), and positions past the "
            f"prefix would get no loss. Use at least {longest + 1}."
        )


def validate_config(config, *, device_count: int, vocab_size: int = 1) -> ModelConfig:
    """Check every field of a trainer or ablation config and the constraints
    between fields; return the ModelConfig.

    `vocab_size` is 1 before the data phase has built the vocabulary. The
    check that the vocabulary splits evenly over its mesh axes needs the real
    size, so it is skipped for 1.

    Raises:
      ConfigError: naming the first invalid value, why, and what to use.
    """
    _check_fields(config, FIELDS)
    for name in ("seed", "task", "model", "data", "optim", "train", "mesh"):
        if name not in config:
            raise ConfigError(
                f"{name} is missing from the config; every trainer config has "
                "seed, task, model, data, optim, train and mesh."
            )
    _check_task(config)
    _check_dataset(config)
    train = config.train
    if config.optim.warmup_steps > train.num_train_steps:
        raise ConfigError(
            f"optim.warmup_steps={config.optim.warmup_steps} is invalid; use at "
            f"most train.num_train_steps={train.num_train_steps}. For a short "
            "run, lower --config.optim.warmup_steps as well."
        )
    try:
        model = ModelConfig.from_config(config.model, vocab_size=vocab_size)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if config.task == "masked_lm" and model.causal:
        raise ConfigError(
            "model.causal=True with task='masked_lm': a masked LM needs a "
            "bidirectional encoder; set --config.model.causal=False."
        )
    _check_model(config, model)
    _check_mesh(config, model, device_count, vocab_size)
    if "grid" in config:
        _check_ablation(config)
    return model


def validate_suite_config(config) -> None:
    """Check a fine-tuning suite config (configs/finetune_suite.py).

    The overrides it applies to trainer configs are checked against FIELDS;
    the trainer configs of its runs go through `validate_config` when each
    run starts.

    Raises:
      ConfigError: naming the first invalid value, why, and what to use.
    """
    _check_fields(config, SUITE_FIELDS)
    names = position_encodings.registered_names()
    unknown = [name for name in config.encodings if name not in names]
    if unknown:
        raise ConfigError(
            f"encodings={config.encodings!r} is invalid; {unknown} are not "
            f"registered position encodings. Use names from {names}."
        )
    overrides = {"pretrain_overrides": config.pretrain_overrides}
    for label, run in config.runs.items():
        MAPPING.check(f"runs.{label}", run)
        if set(run) != {"arg", "overrides"}:
            raise ConfigError(
                f"runs.{label}={_plain(run)!r} is invalid; use a dict with the keys "
                "'arg' (the configs/finetune.py variant) and 'overrides'."
            )
        TEXT.check(f"runs.{label}.arg", run["arg"])
        overrides[f"runs.{label}.overrides"] = run["overrides"]
    for name, groups in overrides.items():
        MAPPING.check(name, groups)
        for group, values in groups.items():
            group_rules = _group_rules(group)
            if not group_rules or not _is_mapping(values):
                raise ConfigError(
                    f"{name}.{group}={_plain(values)!r} is invalid; use a dict of the "
                    "fields of a trainer config group such as train or data."
                )
            _check_overrides(f"{name}.{group}", values, group_rules)
