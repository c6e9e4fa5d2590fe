"""Import the TensorFlow checkpoints of the original RoFormer release.

ZhuiyiTechnology/roformer published its models as bert4keras TensorFlow
checkpoints (`bert_model.ckpt.index` and `.data-*`) with a BERT-style
`bert_config.json` and `vocab.txt`. bert4keras names the variables as
Google's BERT does, for example:

- `bert/embeddings/word_embeddings`, `bert/embeddings/token_type_embeddings`
  and `bert/embeddings/LayerNorm/{gamma,beta}`;
- `bert/encoder/embedding_hidden_mapping_in/{kernel,bias}`, the E -> D
  projection when `embedding_size` differs from `hidden_size`;
- `bert/encoder/layer_<i>/attention/self/{query,key,value}/{kernel,bias}`,
  `.../attention/output/dense/...`, `.../attention/output/LayerNorm/...`,
  `.../intermediate/dense/...`, `.../output/dense/...` and
  `.../output/LayerNorm/...`;
- `cls/predictions/transform/dense/...`, `cls/predictions/transform/LayerNorm/...`
  and `cls/predictions/output_bias`, the MLM head, whose output weights are
  the word embeddings.

Kernels are ``[in, out]``. There is no position table: RoFormer computes
its rotary angles. Pooler, next-sentence and optimizer variables are skipped.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from roformer_jax.interop.huggingface import (
    DECODER_BIAS,
    DECODER_WEIGHT,
    HEADS,
    LM_BIAS,
    POSITION_TABLE,
    TOKEN_TYPE_EMBEDDINGS,
    WORD_EMBEDDINGS,
    CheckpointFormatError,
    Imported,
    check_roformer_v1,
    model_config_from_hf,
    params_from_state_dict,
    read_json_config,
    read_vocab,
    weight_specs,
)
from roformer_jax.model_config import ModelConfig

logger = logging.getLogger(__name__)

# Scope names of optimizer state that the BERT and bert4keras training code
# saves next to the weights.
OPTIMIZER_SCOPES = frozenset(
    {
        "adam_m",
        "adam_v",
        "AdamWeightDecayOptimizer",
        "AdamWeightDecayOptimizer_1",
        "global_step",
    }
)
# Heads of BERT pre-training that RoFormer's models do not use.
# NOTE: the variable names come from bert4keras' BERT variable mapping and
# were tested only on checkpoints written with them, not on the published
# files, so a variable that bert4keras adds beyond that mapping is reported as
# unexpected.
SKIPPED_PREFIXES: tuple[str, ...] = ("bert/pooler/", "cls/seq_relationship/")

# Transformers names whose TF names do not follow the general rule.
_SPECIAL_NAMES: dict[str, str] = {
    WORD_EMBEDDINGS: "bert/embeddings/word_embeddings",
    TOKEN_TYPE_EMBEDDINGS: "bert/embeddings/token_type_embeddings",
    "embeddings_project.weight": "bert/encoder/embedding_hidden_mapping_in/kernel",
    "embeddings_project.bias": "bert/encoder/embedding_hidden_mapping_in/bias",
    LM_BIAS: "cls/predictions/output_bias",
}


def tf_variable_name(name: str) -> str:
    """Return the TF checkpoint name of a transformers RoFormer weight name.

    For example ``encoder.layer.0.attention.self.query.weight`` becomes
    ``bert/encoder/layer_0/attention/self/query/kernel`` and
    ``embeddings.LayerNorm.weight`` becomes ``bert/embeddings/LayerNorm/gamma``.
    """
    if name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[name]
    *scopes, leaf = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", name).split(".")
    layer_norm = scopes[-1] == "LayerNorm"
    if leaf == "weight":
        leaf = "gamma" if layer_norm else "kernel"
    elif leaf == "bias" and layer_norm:
        leaf = "beta"
    root = [] if scopes[0] == "cls" else ["bert"]
    return "/".join([*root, *scopes, leaf])


def load_tf_checkpoint(
    checkpoint_prefix: str | os.PathLike,
    config_path: str | os.PathLike,
    *,
    head: str = "masked_lm",
) -> Imported:
    """Read a RoFormer TF checkpoint of the original release into roformer_jax.

    Args:
      checkpoint_prefix: the path without `.index`, for example
        `chinese_roformer_L-12_H-768_A-12/bert_model.ckpt`.
      config_path: its `bert_config.json`, read as a transformers RoFormer
        config. Keys it lacks take transformers' defaults, and `model_type` may
        be absent. A `vocab.txt` next to it fills `Imported.vocab`.
      head: ``"masked_lm"`` (the released pre-training head), ``"causal_lm"``
        (the GPT-style release, which bert4keras builds as model "roformer"
        with application "lm", so its variables have the same names) or
        ``"encoder"`` (drops the MLM head with a logged warning).

    Raises:
      ImportError: when TensorFlow is not installed.
      CheckpointFormatError: for a missing or unreadable checkpoint or config,
        or a RoFormer V2 config. Its `WeightMismatchError` subclass names each
        variable that is missing, unexpected or of the wrong shape by its TF
        name.
    """
    if head not in HEADS or head == "sequence_classification":
        raise ValueError(
            f"Invalid head {head!r}. The original RoFormer checkpoints have no "
            "classification head: use 'masked_lm', 'causal_lm' or 'encoder', and "
            "add a fresh classifier to the encoder."
        )
    config_path = Path(config_path)
    hf_config = read_json_config(config_path)
    check_roformer_v1(hf_config, source=str(config_path))
    model_config = model_config_from_hf(
        hf_config, causal=head == "causal_lm", source=str(config_path)
    )

    variables = _read_variables(os.fspath(checkpoint_prefix))
    state_dict, tf_names = _to_hf_names(variables, model_config)
    params, model_config = params_from_state_dict(
        state_dict,
        model_config,
        head,
        source=os.fspath(checkpoint_prefix),
        display_name=lambda name: tf_names.get(name, name),
    )
    return Imported(
        model_config=model_config,
        head=head,
        params=params,
        num_labels=None,
        hf_config=hf_config,
        vocab=read_vocab(config_path.parent / "vocab.txt"),
    )


def _read_variables(checkpoint_prefix: str) -> dict[str, np.ndarray]:
    """Read every model variable, skipping optimizer and pre-training-head ones."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "load_tf_checkpoint needs TensorFlow to read TF checkpoints. Install "
            "it with: pip install tensorflow-cpu"
        ) from error

    try:
        reader = tf.train.load_checkpoint(checkpoint_prefix)
    except (ValueError, tf.errors.OpError) as error:
        raise CheckpointFormatError(
            f"Failed to open the TF checkpoint {checkpoint_prefix}: {error}. Pass "
            "the path without the .index or .data-* suffix, for example "
            ".../bert_model.ckpt."
        ) from error

    variables: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for name in sorted(reader.get_variable_to_shape_map()):
        if OPTIMIZER_SCOPES.intersection(name.split("/")) or name.startswith(
            SKIPPED_PREFIXES
        ):
            skipped.append(name)
            continue
        variables[name] = np.asarray(reader.get_tensor(name))
    if skipped:
        logger.info(
            "%s: skipping %d optimizer, pooler and next-sentence variables: %s",
            checkpoint_prefix,
            len(skipped),
            skipped,
        )
    return variables


def _to_hf_names(
    variables: dict[str, np.ndarray], model_config: ModelConfig
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename TF variables to transformers names, transposing kernels.

    Returns the renamed state dict and, for each transformers name, the TF
    name that messages show. Variables with no transformers name keep their TF
    name, so they are reported as unexpected.
    """
    # The MLM head's names cover every head the release can load.
    names = [spec.name for spec in weight_specs(model_config, "masked_lm")]
    tf_names = {name: tf_variable_name(name) for name in names}
    hf_names = {tf_name: name for name, tf_name in tf_names.items()}

    state_dict: dict[str, np.ndarray] = {}
    for tf_name, array in variables.items():
        name = hf_names.get(tf_name)
        if name is None:
            state_dict[tf_name] = array
            continue
        state_dict[name] = array.T if tf_name.endswith("/kernel") else array
    # The TF names of weights that TF checkpoints never contain.
    for name in (POSITION_TABLE, DECODER_WEIGHT, DECODER_BIAS):
        tf_names.setdefault(name, name)
    return state_dict, tf_names
