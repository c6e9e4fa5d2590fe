"""Import and export Hugging Face RoFormer model directories.

A model directory as `transformers` writes it (`save_pretrained`) contains
`config.json`, the weights (`model.safetensors`, `pytorch_model.bin`, or
shards of either listed in a `*.index.json`) and optionally `vocab.txt`.
`load_huggingface` reads one into roformer_jax parameters without torch or
transformers, and `save_huggingface` writes one that transformers loads with
`RoFormer*.from_pretrained`.

The four supported heads and their transformers classes:

- ``"encoder"``: `RoFormerModel`, our `Transformer`.
- ``"masked_lm"``: `RoFormerForMaskedLM`, our `LanguageModel`.
- ``"sequence_classification"``: `RoFormerForSequenceClassification`, our
  `SequenceClassifier`.
- ``"causal_lm"``: `RoFormerForCausalLM` (``is_decoder=True``), our
  `LanguageModel` with ``ModelConfig.causal``.

Transformers' RoFormer (checked against transformers 4.57.6) is a post-LayerNorm
BERT with exact GELU and RoPE in the interleaved layout with base 10000 on
every feature of each head, optionally also on the values (`rotary_value`).
It has no absolute position embeddings. Its `encoder.embed_positions.weight`
stores the sine and cosine table of the rotary angles, which roformer_jax
recomputes instead, so importing checks the table and exporting writes it.

Weight layouts: torch `Linear` weights are ``[out, in]`` and Flax kernels
``[in, out]``. Query, key and value kernels are ``[D, N, H]`` here and
attention output kernels ``[N, H, D]``.

Our models take ``segment_ids``, where 0 marks padding, so transformers'
`attention_mask` can be passed as the segment ids, and positions
``arange(T)`` per row. transformers' RoFormer rejects sequences longer than
`max_position_embeddings` (the rows of its table), while roformer_jax
computes the angles of any position. The imported config keeps the value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from roformer_jax import rotary
from roformer_jax.interop.torch_pickle import (
    TorchCheckpointError,
    bfloat16_to_float32,
    read_torch_state_dict,
)
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.heads import SequenceClassifier
from roformer_jax.models.roformer import LanguageModel, Transformer
from roformer_jax.positions.rope import resolve_rotary_dim

logger = logging.getLogger(__name__)

HEADS: tuple[str, ...] = (
    "encoder",
    "masked_lm",
    "sequence_classification",
    "causal_lm",
)
ARCHITECTURE_HEADS: dict[str, str] = {
    "RoFormerModel": "encoder",
    "RoFormerForMaskedLM": "masked_lm",
    "RoFormerForSequenceClassification": "sequence_classification",
    "RoFormerForCausalLM": "causal_lm",
}
HEAD_ARCHITECTURES: dict[str, str] = {
    head: architecture for architecture, head in ARCHITECTURE_HEADS.items()
}

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
VOCAB_FILE = "vocab.txt"
WEIGHT_FILES: tuple[str, ...] = (
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX_FILE,
    TORCH_FILE,
    TORCH_INDEX_FILE,
)

# The `RoFormerConfig` defaults of transformers 4.57.6, which transformers
# uses for keys that a config.json leaves out.
HF_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50000,
    "embedding_size": None,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 1536,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "rotary_value": False,
    "is_decoder": False,
}
HF_ROTARY_BASE = 10000.0

# Prefix of the encoder weights in the checkpoints of models with a head.
ENCODER_PREFIX = "roformer."
POSITION_TABLE = "encoder.embed_positions.weight"
DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
LM_BIAS = "cls.predictions.bias"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
TOKEN_TYPE_EMBEDDINGS = "embeddings.token_type_embeddings.weight"
HEAD_WEIGHT_PREFIXES: tuple[str, ...] = ("cls.", "classifier.")

# Largest difference tolerated between a checkpoint's position table and the
# sinusoids that transformers computes. Its entries lie in [-1, 1], so
# rounding them to bfloat16 (8 significant bits), the coarsest dtype that
# checkpoints store, moves them by at most 2**-9.
POSITION_TABLE_TOLERANCE = 2**-8

Params = dict[str, Any]
ParamPath = tuple[str, ...]


class CheckpointFormatError(ValueError):
    """A checkpoint's files are missing, unreadable, or do not describe a
    model that roformer_jax can load."""


class UnsupportedArchitectureError(CheckpointFormatError):
    """The checkpoint is a different architecture than transformers' RoFormer,
    or uses an option that roformer_jax does not implement."""


class WeightMismatchError(CheckpointFormatError):
    """Weights are missing, unexpected, or of the wrong shape for the config.

    Attributes:
      missing: names of the expected weights that are absent.
      unexpected: names of the weights that no parameter takes.
      mismatched: ``(name, expected shape, found shape)`` of each weight
        whose shape is wrong.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class UnrepresentableConfigError(ValueError):
    """A ModelConfig uses an option that transformers' RoFormer lacks."""


@dataclasses.dataclass(frozen=True)
class Imported:
    """A model read from a checkpoint, ready for `build_model(...).apply`.

    Attributes:
      model_config: the roformer_jax config of the checkpoint.
      head: one of `HEADS`.
      params: nested dict of float32 numpy arrays, the ``"params"``
        collection of `build_model(self)`.
      num_labels: outputs of the classification head, or None for other heads.
      hf_config: the checkpoint's config file, as parsed from JSON.
      vocab: the tokens of `vocab.txt` in id order, or None without that file.
    """

    model_config: ModelConfig
    head: str
    params: Params
    num_labels: int | None
    hf_config: dict[str, Any]
    vocab: tuple[str, ...] | None = None


# ---------------------------------------------------------------------------
# Public API


def load_huggingface(
    directory: str | os.PathLike, *, head: str | None = None
) -> Imported:
    """Read a Hugging Face RoFormer model directory into roformer_jax parameters.

    Args:
      directory: contains `config.json`, the weights (`model.safetensors`,
        `pytorch_model.bin`, or a sharded `*.index.json` of either, in that
        order of preference) and optionally `vocab.txt`.
      head: one of `HEADS`, or None to take it from the config's
        `architectures`. Weights of another head in the checkpoint (for
        example the MLM head when `head="encoder"`) are dropped with a logged
        warning. ``"causal_lm"`` makes the model causal and ``"masked_lm"``
        bidirectional, whatever the value of `is_decoder`.

    Raises:
      CheckpointFormatError: for missing or unreadable files, a config that is
        not transformers' RoFormer (`UnsupportedArchitectureError`, which also
        names RoFormer V2 checkpoints), an `architectures` entry that
        contradicts `is_decoder`, or weights that do not fit the config
        (`WeightMismatchError`, naming each weight).
    """
    directory = Path(directory)
    hf_config = read_json_config(directory / CONFIG_FILE)
    check_roformer_v1(hf_config, source=str(directory / CONFIG_FILE))
    head, causal = _resolve_head(hf_config, head, source=str(directory / CONFIG_FILE))
    model_config = model_config_from_hf(
        hf_config, causal=causal, source=str(directory / CONFIG_FILE)
    )
    num_labels = (
        _hf_num_labels(hf_config, source=str(directory / CONFIG_FILE))
        if head == "sequence_classification"
        else None
    )

    state_dict = _read_weights(directory)
    params, model_config = params_from_state_dict(
        state_dict, model_config, head, num_labels, source=str(directory)
    )
    return Imported(
        model_config=model_config,
        head=head,
        params=params,
        num_labels=num_labels,
        hf_config=hf_config,
        vocab=read_vocab(directory / VOCAB_FILE),
    )


def build_model(
    source: Imported | ModelConfig,
    head: str | None = None,
    num_labels: int | None = None,
) -> nn.Module:
    """Build the roformer_jax module for a head.

    Call it as `build_model(imported)` or `build_model(model_config, head,
    num_labels)`. `num_labels` is needed for ``"sequence_classification"``
    only.
    """
    if isinstance(source, Imported):
        if head is not None or num_labels is not None:
            raise TypeError(
                "build_model(imported) takes the head and num_labels from the "
                "Imported value. Pass no other arguments."
            )
        model_config, head, num_labels = (
            source.model_config,
            source.head,
            source.num_labels,
        )
    else:
        model_config = source
        if head is None:
            raise TypeError(
                f"build_model(model_config, head) needs a head, one of {HEADS}."
            )
    _check_head(head)

    if head == "encoder":
        return Transformer(model_config)
    if head == "sequence_classification":
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(
                f"num_labels={num_labels!r} is invalid for head "
                "'sequence_classification'. Pass the number of classes, or 1 "
                "for regression."
            )
        return SequenceClassifier(model_config, num_labels)
    if model_config.causal != (head == "causal_lm"):
        raise ValueError(
            f"head={head!r} contradicts model_config.causal={model_config.causal}. "
            "Use head 'causal_lm' with causal=True and 'masked_lm' with "
            "causal=False."
        )
    return LanguageModel(model_config)


def save_huggingface(
    directory: str | os.PathLike,
    model_config: ModelConfig,
    params: Mapping[str, Any],
    head: str,
    *,
    num_labels: int | None = None,
    vocab: Sequence[str] | None = None,
) -> None:
    """Write a model directory that transformers loads with `from_pretrained`.

    Writes `config.json`, `model.safetensors` (float32) and, when `vocab` is
    given, `vocab.txt` with one token per line. The directory is created if
    needed, and those files are overwritten.

    Args:
      directory: output directory.
      model_config: config of the model. The rotary layout may be
        ``"half"``: query and key weights (and value and output weights with
        `rotary_value`) are permuted into the interleaved layout of
        transformers. `type_vocab_size=0` is written as a token-type table of
        one zero row, which adds nothing.
      params: the ``"params"`` collection of `build_model(model_config, head,
        num_labels)`, boxed or not, or a dict with that collection under
        ``"params"``.
      head: one of `HEADS`.
      num_labels: outputs of the classification head. Taken from `params`
        when None.
      vocab: tokens in id order, at most `model_config.vocab_size` of them.

    Raises:
      UnrepresentableConfigError: naming the ModelConfig field that
        transformers' RoFormer cannot represent.
      WeightMismatchError: naming each parameter that is missing, unexpected
        or of the wrong shape for the config.
    """
    _check_head(head)
    check_representable(model_config)
    params = _plain_params(params)
    if head == "sequence_classification" and num_labels is None:
        num_labels = _num_labels_from_params(params)
    expected = expected_param_shapes(model_config, head, num_labels)
    flat = _flatten(params)
    _check_param_tree(flat, expected)
    if vocab is not None:
        vocab = _check_vocab(vocab, model_config.vocab_size)

    if model_config.rotary_layout != "interleaved":
        flat = _to_interleaved_layout(flat, model_config, head)
    state_dict = _state_dict_from_flat_params(flat, model_config, head)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stale = [name for name in WEIGHT_FILES[1:] if (directory / name).exists()]
    if stale:
        logger.warning(
            "%s also contains %s. transformers and load_huggingface read %s "
            "first, but other tools may read the older files.",
            directory,
            stale,
            SAFETENSORS_FILE,
        )
    safetensors.numpy.save_file(
        state_dict, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"}
    )
    config = hf_config_from_model_config(model_config, head, num_labels)
    (directory / CONFIG_FILE).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    if vocab is not None:
        (directory / VOCAB_FILE).write_text(
            "".join(f"{token}\n" for token in vocab), encoding="utf-8"
        )


# ---------------------------------------------------------------------------
# Configs


def read_json_config(path: Path) -> dict[str, Any]:
    """Parse a JSON config file into a dict, naming the file in errors."""
    if not path.is_file():
        raise CheckpointFormatError(
            f"{path} not found. A Hugging Face model directory contains "
            f"{CONFIG_FILE} next to its weights; pass the directory that "
            "save_pretrained wrote."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and integers
        # of more than sys.get_int_max_str_digits() digits, and json raises
        # RecursionError for deeply nested arrays or objects.
        raise CheckpointFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise CheckpointFormatError(
            f"{path} contains a JSON {type(config).__name__}, not an object."
        )
    return config


def check_roformer_v1(hf_config: Mapping[str, Any], *, source: str) -> None:
    """Check that a config describes transformers' RoFormer, not another model.

    Raises:
      UnsupportedArchitectureError: for a `model_type` other than
        ``"roformer"`` (a missing one passes) and for RoFormer V2 configs.
    """
    model_type = hf_config.get("model_type")
    if model_type is not None and model_type != "roformer":
        raise UnsupportedArchitectureError(
            f"{source} has model_type={model_type!r}, but roformer_jax imports "
            "only transformers' RoFormer (model_type 'roformer')."
        )
    # junnyu's RoFormer V2 checkpoints keep model_type 'roformer' and need the
    # `roformer` package (>= 0.4), whose config adds these two keys.
    norm_type = hf_config.get("norm_type", "layer_norm")
    use_bias = hf_config.get("use_bias", True)
    if norm_type != "layer_norm" or use_bias is not True:
        raise UnsupportedArchitectureError(
            f"{source} sets norm_type={norm_type!r} and use_bias={use_bias!r}, "
            f"so it is a RoFormer V2 checkpoint. {_V2_EXPLANATION}"
        )


_V2_EXPLANATION = (
    "RoFormer V2 is a different architecture (an RMS-style norm without "
    "parameters, and dense layers without biases) that roformer_jax does not "
    "implement. Only RoFormer V1 checkpoints (transformers' RoFormer) load."
)


def model_config_from_hf(
    hf_config: Mapping[str, Any], *, causal: bool, source: str
) -> ModelConfig:
    """Translate a transformers RoFormer config into a ModelConfig.

    Keys the config leaves out take `HF_CONFIG_DEFAULTS`.

    Raises:
      UnsupportedArchitectureError: naming the key, for a `hidden_act` other
        than exact GELU, cross-attention, pruned heads, untied output
        embeddings, or a hidden size that the heads do not divide into even
        parts.
    """
    config = {**HF_CONFIG_DEFAULTS, **hf_config}
    hidden_act = config["hidden_act"]
    if hidden_act != "gelu":
        raise UnsupportedArchitectureError(
            f"{source} sets hidden_act={hidden_act!r}, but roformer_jax "
            "implements only exact GELU (hidden_act 'gelu') in its feed-forward "
            "and head layers, so this model cannot be represented."
        )
    if config.get("add_cross_attention"):
        raise UnsupportedArchitectureError(
            f"{source} sets add_cross_attention=true, but roformer_jax has no "
            "cross-attention layers. Load the decoder of an encoder-decoder "
            "model with another library."
        )
    if config.get("pruned_heads"):
        raise UnsupportedArchitectureError(
            f"{source} sets pruned_heads={config['pruned_heads']!r}, but "
            "roformer_jax needs the same number of heads in every layer."
        )
    if config.get("tie_word_embeddings", True) is not True:
        raise UnsupportedArchitectureError(
            f"{source} sets tie_word_embeddings=false, but the roformer_jax LM "
            "head always reuses the token embeddings as output weights."
        )

    hidden_size = _config_int(config, "hidden_size", source, minimum=1)
    num_heads = _config_int(config, "num_attention_heads", source, minimum=1)
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise UnsupportedArchitectureError(
            f"{source} sets hidden_size={hidden_size} and "
            f"num_attention_heads={num_heads}, but RoPE needs an even head size "
            "hidden_size / num_attention_heads."
        )
    embedding_size = None
    if config["embedding_size"] is not None:
        embedding_size = _config_int(config, "embedding_size", source, minimum=1)
        if embedding_size == hidden_size:
            embedding_size = None

    fields = dict(
        vocab_size=_config_int(config, "vocab_size", source, minimum=1),
        hidden_size=hidden_size,
        num_layers=_config_int(config, "num_hidden_layers", source, minimum=0),
        num_heads=num_heads,
        mlp_dim=_config_int(config, "intermediate_size", source, minimum=1),
        embedding_size=embedding_size,
        type_vocab_size=_config_int(config, "type_vocab_size", source, minimum=0),
        max_position_embeddings=_config_int(
            config, "max_position_embeddings", source, minimum=0
        ),
        position_encoding="rope",
        rotary_base=HF_ROTARY_BASE,
        rotary_layout="interleaved",
        rotary_value=bool(config["rotary_value"]),
        causal=causal,
        pre_layer_norm=False,
        layer_norm_epsilon=_config_float(config, "layer_norm_eps", source),
        dropout_rate=_config_float(config, "hidden_dropout_prob", source),
        attention_dropout_rate=_config_float(
            config, "attention_probs_dropout_prob", source
        ),
        initializer_range=_config_float(config, "initializer_range", source),
    )
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointFormatError(
            f"{source} does not describe a valid model: {error}"
        ) from error


def _config_int(
    config: Mapping[str, Any], key: str, source: str, *, minimum: int
) -> int:
    """Return `config[key]` converted by `int`, checking that it is at least `minimum`."""
    value = config[key]
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        raise CheckpointFormatError(
            f"{source} sets {key}={value!r:.80}, but it must be an integer of at "
            f"least {minimum}. Fix the value in the config file."
        )
    return number


def _config_float(config: Mapping[str, Any], key: str, source: str) -> float:
    """Return `config[key]` converted by `float`."""
    value = config[key]
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise CheckpointFormatError(
            f"{source} sets {key}={value!r:.80}, but it must be a number. Fix the "
            "value in the config file."
        ) from error


def check_representable(model_config: ModelConfig) -> None:
    """Check that transformers' RoFormer can represent a ModelConfig.

    Raises:
      UnrepresentableConfigError: naming the first field it cannot represent
        and the value to use.
    """

    def reject(field: str, fix: str) -> UnrepresentableConfigError:
        value = getattr(model_config, field)
        return UnrepresentableConfigError(
            f"model_config.{field}={value!r} cannot be represented by "
            f"transformers' RoFormer. {fix}"
        )

    if model_config.position_encoding != "rope":
        raise reject("position_encoding", "It uses RoPE only: set 'rope'.")
    if model_config.rotary_base != HF_ROTARY_BASE:
        raise reject("rotary_base", "Its RoPE base is fixed at 10000.")
    if model_config.rope_scaling != "none":
        raise reject("rope_scaling", "It has no RoPE rescaling: set 'none'.")
    if model_config.rotary_layout not in rotary.LAYOUTS:
        raise reject("rotary_layout", f"Use one of {rotary.LAYOUTS}.")
    if model_config.pre_layer_norm:
        raise reject("pre_layer_norm", "Its layers are post-LayerNorm: set False.")
    if model_config.attention != "softmax":
        raise reject("attention", "It has softmax attention only: set 'softmax'.")
    if model_config.hidden_size % model_config.num_heads or model_config.head_dim % 2:
        raise reject(
            "num_heads",
            "Its heads split hidden_size evenly into heads of an even size.",
        )
    if resolve_rotary_dim(model_config) != model_config.head_dim:
        field = (
            "rotary_dim" if model_config.rotary_dim is not None else "rotary_fraction"
        )
        raise reject(
            field,
            "It rotates every feature of each head: set rotary_dim=None and "
            "rotary_fraction=1.0.",
        )


def hf_config_from_model_config(
    model_config: ModelConfig, head: str, num_labels: int | None = None
) -> dict[str, Any]:
    """Build the config.json contents of transformers' RoFormer for a model."""
    config: dict[str, Any] = {
        "architectures": [HEAD_ARCHITECTURES[head]],
        "model_type": "roformer",
        "vocab_size": model_config.vocab_size,
        "embedding_size": model_config.embedding_dim,
        "hidden_size": model_config.hidden_size,
        "num_hidden_layers": model_config.num_layers,
        "num_attention_heads": model_config.num_heads,
        "intermediate_size": model_config.mlp_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": model_config.dropout_rate,
        "attention_probs_dropout_prob": model_config.attention_dropout_rate,
        "max_position_embeddings": model_config.max_position_embeddings,
        "type_vocab_size": max(model_config.type_vocab_size, 1),
        "initializer_range": model_config.initializer_range,
        "layer_norm_eps": model_config.layer_norm_epsilon,
        "rotary_value": model_config.rotary_value,
        "is_decoder": model_config.causal,
        "pad_token_id": 0,
        "use_cache": True,
        "dtype": "float32",
    }
    if head == "sequence_classification":
        labels = [f"LABEL_{i}" for i in range(num_labels)]
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    return config


def _resolve_head(
    hf_config: Mapping[str, Any], head: str | None, *, source: str
) -> tuple[str, bool]:
    """Return the head and whether the model is causal."""
    is_decoder = bool(hf_config.get("is_decoder", False))
    if head is not None:
        _check_head(head)
        if head == "causal_lm":
            causal = True
        elif head == "masked_lm":
            causal = False
        else:
            causal = is_decoder
        if causal != is_decoder:
            logger.warning(
                "%s sets is_decoder=%s, but head=%r makes the model %s.",
                source,
                is_decoder,
                head,
                "causal" if causal else "bidirectional",
            )
        return head, causal

    architectures = hf_config.get("architectures") or []
    # Anything but a list of class names is an unknown head.
    heads: list[str | None] = [None]
    if isinstance(architectures, list):
        heads = [
            ARCHITECTURE_HEADS.get(name) if isinstance(name, str) else None
            for name in architectures
        ]
    if len(heads) != 1 or heads[0] is None:
        raise CheckpointFormatError(
            f"{source} has architectures={architectures!r}, so the head is "
            f"unknown. Pass head= one of {HEADS}, or use a config whose "
            f"architectures is one of {sorted(ARCHITECTURE_HEADS)}."
        )
    head = heads[0]
    if head == "causal_lm" and not is_decoder:
        raise CheckpointFormatError(
            f"{source} names RoFormerForCausalLM but sets is_decoder=false, so "
            "transformers would run it without the causal mask. Set is_decoder "
            "to true in the config, or pass head='masked_lm' to load it as a "
            "bidirectional masked LM."
        )
    if head == "masked_lm" and is_decoder:
        raise CheckpointFormatError(
            f"{source} names RoFormerForMaskedLM but sets is_decoder=true, which "
            "makes its attention causal. Set is_decoder to false in the config, "
            "or pass head='causal_lm' to load it as a causal LM."
        )
    return head, is_decoder


def _hf_num_labels(hf_config: Mapping[str, Any], *, source: str) -> int:
    # transformers derives num_labels from id2label and defaults to 2 labels.
    if "id2label" not in hf_config:
        return _config_int(
            {"num_labels": 2, **hf_config}, "num_labels", source, minimum=1
        )
    id2label = hf_config["id2label"]
    if not isinstance(id2label, (dict, list)) or not id2label:
        raise CheckpointFormatError(
            f"{source} sets id2label={id2label!r:.80}, but it must be a non-empty "
            "object that maps each class id to its label name."
        )
    return len(id2label)


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"Invalid head {head!r}. Use one of {HEADS}.")


def read_vocab(path: Path) -> tuple[str, ...] | None:
    """Read a `vocab.txt` (one token per line, in id order), or None if absent."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointFormatError(
            f"{path} is not valid UTF-8 ({error}). Save {VOCAB_FILE} as UTF-8 "
            "text with one token per line."
        ) from error
    # Split on line feeds only, as transformers' BERT tokenizers do: tokens may
    # contain other characters that str.splitlines treats as line breaks.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return tuple(lines)


def _check_vocab(vocab: Sequence[str], vocab_size: int) -> tuple[str, ...]:
    tokens = tuple(vocab)
    if len(tokens) > vocab_size:
        raise ValueError(
            f"vocab has {len(tokens)} tokens, more than model_config.vocab_size="
            f"{vocab_size}. Pass the tokens of the model's vocabulary in id order."
        )
    for token in tokens:
        if not isinstance(token, str) or "\n" in token or "\r" in token:
            raise ValueError(
                f"vocab token {token!r} is not a string without line breaks, so "
                "it cannot be one line of vocab.txt."
            )
    return tokens


# ---------------------------------------------------------------------------
# Reading weights


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    if (directory / SAFETENSORS_FILE).is_file():
        return read_safetensors(directory / SAFETENSORS_FILE)
    if (directory / SAFETENSORS_INDEX_FILE).is_file():
        return _read_sharded(directory / SAFETENSORS_INDEX_FILE, read_safetensors)
    if (directory / TORCH_FILE).is_file():
        return _read_torch(directory / TORCH_FILE)
    if (directory / TORCH_INDEX_FILE).is_file():
        return _read_sharded(directory / TORCH_INDEX_FILE, _read_torch)
    raise CheckpointFormatError(
        f"{directory} contains none of the weight files {list(WEIGHT_FILES)}. "
        "Pass the directory that save_pretrained wrote."
    )


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_torch_state_dict(path)
    except TorchCheckpointError as error:
        raise CheckpointFormatError(str(error)) from error


def _read_sharded(
    index_path: Path, read_shard: Callable[[Path], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Read the shards that a `*.index.json` weight map lists, and merge them."""
    index = read_json_config(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointFormatError(
            f"{index_path} has no 'weight_map' object mapping weight names to "
            "shard files."
        )
    shard_names = set()
    for weight_name, shard_name in weight_map.items():
        if not isinstance(shard_name, str):
            raise CheckpointFormatError(
                f"{index_path} maps the weight {weight_name} to {shard_name!r:.80}, "
                "but weight_map values must be shard file names."
            )
        shard_names.add(shard_name)
    state_dict: dict[str, np.ndarray] = {}
    for shard_name in sorted(shard_names):
        shard_path = index_path.parent / shard_name
        if not shard_path.is_file():
            raise CheckpointFormatError(
                f"{shard_path} not found, but {index_path} lists it as a shard."
            )
        shard = read_shard(shard_path)
        repeated = sorted(set(shard) & set(state_dict))
        if repeated:
            raise CheckpointFormatError(
                f"{shard_path} repeats the weights {repeated} of another shard."
            )
        state_dict.update(shard)
    unlisted = sorted(set(weight_map) - set(state_dict))
    if unlisted:
        raise CheckpointFormatError(
            f"{index_path} lists the weights {unlisted}, but no shard contains them."
        )
    return state_dict


# Element types of the safetensors format and their little-endian numpy dtypes.
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a `.safetensors` file into numpy arrays, bfloat16 widened to float32.

    The safetensors numpy API (safetensors 0.8.0) raises on bfloat16 tensors,
    so this reads the documented format directly:
    an 8-byte little-endian header size, a JSON header giving each tensor's
    dtype, shape and byte range, then the little-endian data.
    """
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointFormatError(f"{path} is too short to be a safetensors file.")
    header_size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (ValueError, RecursionError) as error:
        # The same errors as in read_json_config.
        raise CheckpointFormatError(
            f"{path} has an invalid safetensors header: {error}"
        ) from error
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path} has an invalid safetensors header.")
    start = 8 + header_size

    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)
        ):
            raise CheckpointFormatError(
                f"{path}: the header entry of tensor {name} is {info!r}, which "
                "lacks dtype, shape or data_offsets. The file is corrupt."
            )
        dtype_name = info["dtype"]
        if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
            raise CheckpointFormatError(
                f"{path}: tensor {name} has dtype {dtype_name!r}, which this "
                f"reader does not support. Supported: {sorted(_SAFETENSORS_DTYPES)}."
            )
        dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
        shape, begin, end = _tensor_layout(info, path, name)
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or start + end > len(data):
            raise CheckpointFormatError(
                f"{path}: tensor {name} with shape {shape} and dtype {dtype_name} "
                f"has the invalid byte range [{begin}, {end}). The file is "
                "truncated or corrupt."
            )
        array = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin)
        if dtype_name == "BF16":
            array = bfloat16_to_float32(array)
        arrays[name] = array.reshape(shape)
    return arrays


def _tensor_layout(
    info: Mapping[str, Any], path: Path, name: str
) -> tuple[tuple[int, ...], int, int]:
    """Return the shape and the byte range [begin, end) of a safetensors header entry."""
    try:
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(offset) for offset in info["data_offsets"])
        valid = all(n >= 0 for n in shape) and 0 <= begin <= end
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise CheckpointFormatError(
            f"{path}: tensor {name} has shape {info['shape']!r:.80} and "
            f"data_offsets {info['data_offsets']!r:.80}, but they must be a list "
            "of non-negative integers and two offsets [begin, end] with begin <= "
            "end. The file is corrupt."
        )
    return shape, begin, end


# ---------------------------------------------------------------------------
# Weight names and layouts


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One checkpoint weight and the parameter it becomes.

    `name` is the transformers name without the ``roformer.`` prefix, `path`
    the parameter path in our model, and `layout` one of `_LAYOUTS`.
    """

    name: str
    path: ParamPath
    layout: str


# Weight layouts, each as the transformers shape and our shape:
# "copy": the same shape. "dense": a torch Linear weight [out, in] and a Flax
# kernel [in, out]. "qkv_kernel": [N * H, D] and [D, N, H]. "qkv_bias":
# [N * H] and [N, H]. "attention_output_kernel": [D, N * H] and [N, H, D].
_LAYOUTS = ("copy", "dense", "qkv_kernel", "qkv_bias", "attention_output_kernel")


def _from_hf(layout: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layout == "dense":
        return array.T
    if layout in ("qkv_kernel", "attention_output_kernel"):
        return array.T.reshape(shape)
    return array.reshape(shape)


def _to_hf(layout: str, array: np.ndarray) -> np.ndarray:
    if layout == "dense":
        return array.T
    if layout == "qkv_kernel":
        return array.reshape(array.shape[0], -1).T
    if layout == "qkv_bias":
        return array.reshape(-1)
    if layout == "attention_output_kernel":
        return array.reshape(-1, array.shape[-1]).T
    return array


def _hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the transformers shape of a parameter of our shape `shape`."""
    if layout == "dense":
        return tuple(reversed(shape))
    if layout == "qkv_kernel":  # [D, N, H] -> [N * H, D]
        return (shape[1] * shape[2], shape[0])
    if layout == "qkv_bias":  # [N, H] -> [N * H]
        return (shape[0] * shape[1],)
    if layout == "attention_output_kernel":  # [N, H, D] -> [D, N * H]
        return (shape[2], shape[0] * shape[1])
    return shape


def weight_specs(
    model_config: ModelConfig, head: str, num_labels: int | None = None
) -> list[WeightSpec]:
    """List every parameter of a model and its transformers weight name."""
    encoder: ParamPath = () if head == "encoder" else ("transformer",)
    specs: list[WeightSpec] = []

    def add(name: str, path: ParamPath, layout: str = "copy") -> None:
        specs.append(WeightSpec(name, path, layout))

    def add_dense(name: str, path: ParamPath, layout: str = "dense") -> None:
        add(f"{name}.weight", (*path, "kernel"), layout)
        add(
            f"{name}.bias",
            (*path, "bias"),
            "qkv_bias" if layout == "qkv_kernel" else "copy",
        )

    def add_layer_norm(name: str, path: ParamPath) -> None:
        add(f"{name}.weight", (*path, "scale"))
        add(f"{name}.bias", (*path, "bias"))

    embeddings = (*encoder, "embeddings")
    add(WORD_EMBEDDINGS, (*embeddings, "token", "embedding"))
    if model_config.type_vocab_size:
        add(TOKEN_TYPE_EMBEDDINGS, (*embeddings, "token_type", "embedding"))
    add_layer_norm("embeddings.LayerNorm", (*embeddings, "layer_norm"))
    if model_config.embedding_dim != model_config.hidden_size:
        add_dense("embeddings_project", (*embeddings, "projection"))

    for i in range(model_config.num_layers):
        name = f"encoder.layer.{i}"
        layer = (*encoder, f"layer_{i}")
        for projection in ("query", "key", "value"):
            add_dense(
                f"{name}.attention.self.{projection}",
                (*layer, "attention", projection),
                "qkv_kernel",
            )
        add(
            f"{name}.attention.output.dense.weight",
            (*layer, "attention", "output", "kernel"),
            "attention_output_kernel",
        )
        add(
            f"{name}.attention.output.dense.bias",
            (*layer, "attention", "output", "bias"),
        )
        add_layer_norm(
            f"{name}.attention.output.LayerNorm", (*layer, "attention_layer_norm")
        )
        add_dense(
            f"{name}.intermediate.dense", (*layer, "feed_forward", "intermediate")
        )
        add_dense(f"{name}.output.dense", (*layer, "feed_forward", "output"))
        add_layer_norm(f"{name}.output.LayerNorm", (*layer, "feed_forward_layer_norm"))

    if head in ("masked_lm", "causal_lm"):
        add_dense("cls.predictions.transform.dense", ("lm_head", "transform"))
        add_layer_norm("cls.predictions.transform.LayerNorm", ("lm_head", "layer_norm"))
        add(LM_BIAS, ("lm_head", "bias"))
    elif head == "sequence_classification":
        add_dense("classifier.dense", ("classifier", "dense"))
        add_dense("classifier.out_proj", ("classifier", "out_proj"))
    return specs


def expected_param_shapes(
    model_config: ModelConfig, head: str, num_labels: int | None = None
) -> dict[ParamPath, tuple[int, ...]]:
    """Return the shape of every parameter of `build_model(...)`, by path.

    The shapes come from `jax.eval_shape` of the module's `init`, so nothing
    is allocated.
    """
    model = build_model(model_config, head, num_labels)
    tokens = jnp.zeros((1, 2), jnp.int32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens + 1, tokens)
    )
    params = nn.meta.unbox(variables["params"])
    return {path: tuple(leaf.shape) for path, leaf in _flatten(params).items()}


def _specs_for(
    model_config: ModelConfig, head: str, num_labels: int | None
) -> tuple[list[WeightSpec], dict[ParamPath, tuple[int, ...]]]:
    specs = weight_specs(model_config, head, num_labels)
    shapes = expected_param_shapes(model_config, head, num_labels)
    covered = {spec.path for spec in specs}
    if covered != set(shapes):
        # The name table above and the Flax modules disagree: a bug in
        # roformer_jax, not in the checkpoint.
        raise RuntimeError(
            "The weight table of roformer_jax.interop does not match the model: "
            f"parameters without a weight name {sorted(set(shapes) - covered)}, "
            f"weight names without a parameter {sorted(covered - set(shapes))}."
        )
    return specs, shapes


# ---------------------------------------------------------------------------
# State dict -> params


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray],
    model_config: ModelConfig,
    head: str,
    num_labels: int | None = None,
    *,
    source: str,
    display_name: Callable[[str], str] | None = None,
) -> tuple[Params, ModelConfig]:
    """Convert transformers-named weights into the parameters of a model.

    Args:
      state_dict: weights named as in transformers' RoFormer, with or without
        the ``roformer.`` prefix of the encoder weights.
      model_config: config of the model the weights are for.
      head: one of `HEADS`. Weights of the other heads are dropped with a
        logged warning.
      num_labels: outputs of the classification head.
      source: the file or directory the weights come from, for messages.
      display_name: maps a weight name without the prefix to the name that
        messages show. By default the name as the checkpoint spells it.

    Returns:
      The nested float32 parameters, and `model_config`, whose
      `type_vocab_size` becomes 0 when the checkpoint's token-type table is a
      single zero row (the table `save_huggingface` writes for 0).

    Raises:
      UnsupportedArchitectureError: for RoFormer V2 weights, untied output
        embeddings, or a position table other than the RoPE sinusoids.
      WeightMismatchError: naming each weight that is missing, unexpected or
        of the wrong shape.
    """
    weights, spelled = _strip_encoder_prefix(state_dict)
    if display_name is None:
        prefix = "" if head == "encoder" else ENCODER_PREFIX

        def display_name(name: str) -> str:
            if name in spelled:
                return spelled[name]
            if name.startswith(HEAD_WEIGHT_PREFIXES):
                return name
            return prefix + name

    _check_not_v2(weights, source)
    _check_position_table(weights, model_config, source, display_name)
    _check_tied_decoder(weights, source, display_name)
    weights.pop(POSITION_TABLE, None)
    weights.pop(DECODER_WEIGHT, None)
    weights.pop(DECODER_BIAS, None)

    if model_config.type_vocab_size == 1 and _is_zero_row(
        weights.get(TOKEN_TYPE_EMBEDDINGS)
    ):
        weights.pop(TOKEN_TYPE_EMBEDDINGS)
        model_config = dataclasses.replace(model_config, type_vocab_size=0)

    specs, shapes = _specs_for(model_config, head, num_labels)
    expected_names = {spec.name for spec in specs}
    dropped = sorted(
        name
        for name in weights
        if name not in expected_names and name.startswith(HEAD_WEIGHT_PREFIXES)
    )
    if dropped:
        logger.warning(
            "%s: dropping the weights %s, which head %r does not use.",
            source,
            [display_name(name) for name in dropped],
            head,
        )
        for name in dropped:
            del weights[name]

    missing = [spec.name for spec in specs if spec.name not in weights]
    unexpected = sorted(set(weights) - expected_names)
    mismatched = []
    for spec in specs:
        if spec.name in weights:
            expected = _hf_shape(spec.layout, shapes[spec.path])
            found = tuple(weights[spec.name].shape)
            if found != expected:
                mismatched.append((display_name(spec.name), expected, found))
    _raise_mismatch(
        source,
        missing=[display_name(name) for name in missing],
        unexpected=[display_name(name) for name in unexpected],
        mismatched=mismatched,
        fix="Check that config.json belongs to these weights and that head="
        f"{head!r} is the head they were saved with.",
    )

    flat = {
        spec.path: np.ascontiguousarray(
            _from_hf(spec.layout, weights[spec.name], shapes[spec.path]),
            dtype=np.float32,
        )
        for spec in specs
    }
    return _unflatten(flat), model_config


def _strip_encoder_prefix(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Drop the ``roformer.`` prefix, and map each new name to the original."""
    weights: dict[str, np.ndarray] = {}
    spelled: dict[str, str] = {}
    for original, array in state_dict.items():
        name = original.removeprefix(ENCODER_PREFIX)
        if name in weights:
            raise CheckpointFormatError(
                f"The checkpoint contains both {spelled[name]} and {original}, "
                "the same weight with and without the encoder prefix."
            )
        weights[name] = np.asarray(array)
        spelled[name] = original
    return weights, spelled


def _check_not_v2(weights: Mapping[str, np.ndarray], source: str) -> None:
    # RoFormer V2 has no LayerNorm parameters and no biases at all.
    has_layer_norm = any(".LayerNorm." in name for name in weights)
    has_bias = any(name.endswith(".bias") for name in weights)
    if WORD_EMBEDDINGS in weights and not has_layer_norm and not has_bias:
        raise UnsupportedArchitectureError(
            f"{source} has no LayerNorm weights and no biases, so it contains "
            f"RoFormer V2 weights. {_V2_EXPLANATION}"
        )


def hf_position_table(num_positions: int, head_dim: int) -> np.ndarray:
    """Compute transformers' RoFormer position table, ``[positions, head_dim]``.

    Row p contains ``sin(p * theta_i)`` for i < head_dim / 2, then
    ``cos(p * theta_i)``, with ``theta_i = 10000 ** (-2i / head_dim)``,
    computed in float64 as transformers does and rounded to float32.
    """
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    exponents = 2 * np.arange(head_dim // 2, dtype=np.float64) / head_dim
    angles = positions / np.power(HF_ROTARY_BASE, exponents)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def _check_position_table(
    weights: Mapping[str, np.ndarray],
    model_config: ModelConfig,
    source: str,
    display_name: Callable[[str], str],
) -> None:
    table = weights.get(POSITION_TABLE)
    if table is None:
        return
    expected_shape = (model_config.max_position_embeddings, model_config.head_dim)
    if tuple(table.shape) != expected_shape:
        _raise_mismatch(
            source,
            mismatched=[
                (display_name(POSITION_TABLE), expected_shape, tuple(table.shape))
            ],
            fix="Its rows are max_position_embeddings and its columns "
            "hidden_size / num_attention_heads from config.json.",
        )
    reference = hf_position_table(*expected_shape)
    with np.errstate(invalid="ignore"):
        difference = np.abs(table.astype(np.float64) - reference)
    error = float(np.max(difference, initial=0.0))
    # A NaN entry makes `error` NaN, which no comparison with a bound rejects.
    if not error <= POSITION_TABLE_TOLERANCE:
        raise UnsupportedArchitectureError(
            f"{source}: {display_name(POSITION_TABLE)} differs from the RoPE "
            f"sinusoids with base 10000 by up to {error:.3g}. roformer_jax "
            "computes the rotary angles itself and cannot use another table. If "
            "the table was damaged, delete it from the checkpoint (transformers "
            "recomputes it when it is missing)."
        )


def _check_tied_decoder(
    weights: Mapping[str, np.ndarray],
    source: str,
    display_name: Callable[[str], str],
) -> None:
    for name, tied_to in ((DECODER_WEIGHT, WORD_EMBEDDINGS), (DECODER_BIAS, LM_BIAS)):
        if name not in weights or tied_to not in weights:
            continue
        if not np.array_equal(weights[name], weights[tied_to]):
            raise UnsupportedArchitectureError(
                f"{source}: {display_name(name)} differs from "
                f"{display_name(tied_to)}, but transformers' RoFormer ties "
                "them and so does roformer_jax. The checkpoint was trained "
                "with untied output embeddings, which cannot be represented."
            )


def _is_zero_row(table: np.ndarray | None) -> bool:
    # A 0-d table is no row at all, and the shape check reports it.
    return (
        table is not None
        and table.ndim > 0
        and table.shape[0] == 1
        and not np.any(table)
    )


def _raise_mismatch(
    source: str,
    *,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    fix: str,
) -> None:
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing weights {_list_names(missing)}")
    if unexpected:
        parts.append(f"unexpected weights {_list_names(unexpected)}")
    if mismatched:
        shapes = [
            f"{name} (expected {expected}, found {found})"
            for name, expected, found in mismatched
        ]
        parts.append(f"shape mismatches {_list_names(shapes)}")
    raise WeightMismatchError(
        f"{source}: {'; '.join(parts)}. {fix}",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def _list_names(names: Sequence[str], limit: int = 20) -> str:
    listed = ", ".join(names[:limit])
    if len(names) > limit:
        listed += f", and {len(names) - limit} more"
    return f"[{listed}]"


# ---------------------------------------------------------------------------
# Params -> state dict


def _plain_params(params: Mapping[str, Any]) -> Params:
    """Unbox logical partitioning and unwrap a ``{"params": ...}`` dict."""
    params = nn.meta.unbox(params)
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = params["params"]
    return jax.tree.map(lambda leaf: np.asarray(jax.device_get(leaf)), dict(params))


def _num_labels_from_params(params: Params) -> int:
    try:
        return int(np.shape(params["classifier"]["out_proj"]["bias"])[0])
    except (KeyError, TypeError, IndexError):
        raise WeightMismatchError(
            "params has no classifier/out_proj/bias, so num_labels is unknown. "
            "Pass the params of a SequenceClassifier, or num_labels.",
            missing=["classifier/out_proj/bias"],
        ) from None


def _check_param_tree(
    flat: Mapping[ParamPath, np.ndarray],
    expected: Mapping[ParamPath, tuple[int, ...]],
) -> None:
    def name(path: ParamPath) -> str:
        return "/".join(path)

    mismatched = [
        (name(path), shape, tuple(flat[path].shape))
        for path, shape in expected.items()
        if path in flat and tuple(flat[path].shape) != shape
    ]
    _raise_mismatch(
        "params",
        missing=[name(path) for path in expected if path not in flat],
        unexpected=[name(path) for path in flat if path not in expected],
        mismatched=mismatched,
        fix="Pass the params of build_model(model_config, head, num_labels).",
    )


def _to_interleaved_layout(
    flat: Mapping[ParamPath, np.ndarray], model_config: ModelConfig, head: str
) -> dict[ParamPath, np.ndarray]:
    """Permute rotated projections from `model_config.rotary_layout` to interleaved.

    Rotated features of the queries and keys, and of the values when
    `rotary_value` is set, change order. With rotated values, the input rows
    of the attention output kernel follow the values.
    """
    flat = dict(flat)
    encoder: ParamPath = () if head == "encoder" else ("transformer",)
    permute = dict(
        num_heads=model_config.num_heads,
        head_dim=model_config.head_dim,
        from_layout=model_config.rotary_layout,
        to_layout="interleaved",
    )
    rotated = (
        ("query", "key", "value") if model_config.rotary_value else ("query", "key")
    )
    for i in range(model_config.num_layers):
        attention = (*encoder, f"layer_{i}", "attention")
        for projection in rotated:
            for leaf in ("kernel", "bias"):
                path = (*attention, projection, leaf)
                flat[path] = rotary.permute_qk_weights(flat[path], **permute)
        if model_config.rotary_value:
            path = (*attention, "output", "kernel")  # [N, H, D]
            heads_last = np.moveaxis(flat[path], -1, 0)  # [D, N, H]
            heads_last = rotary.permute_qk_weights(heads_last, **permute)
            flat[path] = np.moveaxis(heads_last, 0, -1)
    return flat


def _state_dict_from_flat_params(
    flat: Mapping[ParamPath, np.ndarray], model_config: ModelConfig, head: str
) -> dict[str, np.ndarray]:
    prefix = "" if head == "encoder" else ENCODER_PREFIX
    num_labels = None
    if head == "sequence_classification":
        num_labels = int(flat[("classifier", "out_proj", "bias")].shape[0])

    state_dict: dict[str, np.ndarray] = {}
    for spec in weight_specs(model_config, head, num_labels):
        name = (
            spec.name
            if spec.name.startswith(HEAD_WEIGHT_PREFIXES)
            else prefix + spec.name
        )
        state_dict[name] = _contiguous_float32(_to_hf(spec.layout, flat[spec.path]))
    if not model_config.type_vocab_size:
        state_dict[prefix + TOKEN_TYPE_EMBEDDINGS] = np.zeros(
            (1, model_config.embedding_dim), np.float32
        )
    state_dict[prefix + POSITION_TABLE] = hf_position_table(
        model_config.max_position_embeddings, model_config.head_dim
    )
    return state_dict


def _contiguous_float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


# ---------------------------------------------------------------------------
# Nested dicts


def _flatten(tree: Mapping[str, Any], prefix: ParamPath = ()) -> dict[ParamPath, Any]:
    flat: dict[ParamPath, Any] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _unflatten(
    flat: Iterable[tuple[ParamPath, Any]] | Mapping[ParamPath, Any],
) -> Params:
    items = flat.items() if isinstance(flat, Mapping) else flat
    tree: Params = {}
    for path, value in items:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
