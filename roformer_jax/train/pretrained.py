"""Start a fine-tuning run from a pre-trained encoder: the latest checkpoint
of a roformer_jax pre-training run (`finetune.init_workdir`), or a Hugging
Face RoFormer directory (`finetune.init_hf_dir`).

Only the `transformer` parameters are taken from the pre-trained model; the
task head keeps its fresh initialisation and the optimizer starts from zero.
"""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from roformer_jax.interop import load_huggingface
from roformer_jax.model_config import ModelConfig
from roformer_jax.train import checkpoint
from roformer_jax.train.state import StateLayout, TrainState

logger = logging.getLogger(__name__)

ENCODER = "transformer"
LEARNED_POSITION_TABLE = "embeddings/position/table/embedding"


class PretrainedMismatchError(ValueError):
    """The pre-trained encoder does not fit the model being fine-tuned."""


def _restore_params(init_workdir: str, mesh) -> tuple[dict, int, str]:
    try:
        restored = checkpoint.restore_params(init_workdir, mesh)
    except checkpoint.MissingCheckpointError as error:
        raise PretrainedMismatchError(f"finetune.init_workdir: {error}") from error
    return restored.params, restored.step, restored.directory


def _extend_table(table: np.ndarray, rows: int) -> np.ndarray:
    """Tile a learned position table to `rows` rows: copy k of position p
    initialises position p + k * (old size)."""
    repeats = -(-rows // table.shape[0])
    return np.tile(table, (repeats, 1))[:rows]


def _model_field_differences(init_workdir: str, model_fields: dict | None) -> str:
    """Describe how `model.*` differs from the pre-training run's config.json."""
    path = os.path.join(init_workdir, "config.json")
    if model_fields is None or not os.path.exists(path):
        return ""
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file).get("model", {})
    except (OSError, ValueError):
        return ""
    changed = [
        f"model.{name}: pre-training {stored[name]!r}, this run {value!r}"
        for name, value in sorted(model_fields.items())
        if name in stored and stored[name] != value
    ]
    if not changed:
        return ""
    return "\nModel settings that differ from the pre-training run:\n  " + "\n  ".join(
        changed
    )


def load_encoder(
    state: TrainState,
    layout: StateLayout,
    init_workdir: str,
    *,
    extend_positions: bool,
    model_fields: dict | None = None,
) -> TrainState:
    """Replace the encoder parameters of a fresh state with pre-trained ones.

    Raises:
      PretrainedMismatchError: no checkpoint, or its encoder differs in
        parameter names or shapes; the message lists each difference. A
        learned position table smaller than the model's is extended only
        when `extend_positions` is true.
    """
    mesh = jax.tree.leaves(layout.shardings.params)[0].mesh
    stored_params, step, directory = _restore_params(init_workdir, mesh)
    if ENCODER not in stored_params:
        raise PretrainedMismatchError(
            f"The checkpoint in {directory} has no {ENCODER!r} parameters "
            f"(found {sorted(stored_params)}); it was not written by a "
            "roformer_jax model."
        )
    stored = dict(jax.tree.map(np.asarray, stored_params[ENCODER]))
    expected = state.params[ENCODER]
    stored_shapes = checkpoint.shapes_by_path(stored)
    expected_shapes = checkpoint.shapes_by_path(expected)
    table = LEARNED_POSITION_TABLE
    if (
        table in stored_shapes
        and table in expected_shapes
        and stored_shapes[table][0] < expected_shapes[table][0]
    ):
        old_rows, new_rows = stored_shapes[table][0], expected_shapes[table][0]
        if not extend_positions:
            raise PretrainedMismatchError(
                f"The pre-trained learned position table has {old_rows} "
                f"positions but this model has max_position_embeddings="
                f"{new_rows}. Learned absolute positions cannot represent "
                f"positions at or past {old_rows}; set "
                "--config.finetune.extend_position_embeddings=True to tile the "
                "table, or use data.seq_len and model.max_position_embeddings "
                f"of at most {old_rows}."
            )
        logger.info(
            "Extending the learned position table from %d to %d rows by tiling.",
            old_rows,
            new_rows,
        )
        embeddings = stored["embeddings"]["position"]["table"]
        embeddings["embedding"] = _extend_table(embeddings["embedding"], new_rows)
        stored_shapes[table] = (new_rows, stored_shapes[table][1])
    differences = checkpoint.describe_differences(stored_shapes, expected_shapes)
    if differences:
        raise PretrainedMismatchError(
            f"The encoder in checkpoint {step} of {directory} does not fit this "
            "model:\n  "
            + "\n  ".join(differences)
            + _model_field_differences(init_workdir, model_fields)
            + "\nUse the pre-training run's model.* settings (and its tokenizer, "
            "which fixes the vocabulary size) for fine-tuning."
        )
    return _install_encoder(state, layout, stored, f"checkpoint {step} of {directory}")


def _install_encoder(
    state: TrainState, layout: StateLayout, stored: dict, source: str
) -> TrainState:
    expected = state.params[ENCODER]
    shardings = layout.shardings.params[ENCODER]
    encoder = jax.tree.map(
        lambda value, reference, sharding: jax.device_put(
            jnp.asarray(value, dtype=reference.dtype), sharding
        ),
        stored,
        expected,
        shardings,
    )
    logger.info("Initialised the encoder from %s; the task head is new.", source)
    return state.replace(params={**state.params, ENCODER: encoder})


# Fields that only shape training, so a fine-tuning run may set its own.
_TRAINING_ONLY_FIELDS = (
    "dropout_rate",
    "attention_dropout_rate",
    "initializer_range",
    "dtype",
)


def load_huggingface_encoder(
    state: TrainState, layout: StateLayout, directory: str, model: ModelConfig
) -> TrainState:
    """Replace the encoder parameters with those of a Hugging Face RoFormer.

    Any head in the directory is dropped; only the encoder is read.

    Raises:
      PretrainedMismatchError: `model` differs from the checkpoint's config
        in a field that shapes the encoder; the message lists each one.
    """
    imported = load_huggingface(directory, head="encoder")
    reference = imported.model_config
    changed = [
        f"model.{field}: checkpoint {getattr(reference, field)!r}, this run "
        f"{getattr(model, field)!r}"
        for field in (field.name for field in dataclasses.fields(ModelConfig))
        if field not in _TRAINING_ONLY_FIELDS + ("causal",)
        and getattr(reference, field) != getattr(model, field)
    ]
    if changed:
        raise PretrainedMismatchError(
            f"finetune.init_hf_dir={directory!r} contains a different encoder:\n  "
            + "\n  ".join(changed)
            + "\nThe config variant hf_dir=PATH of configs/finetune.py copies "
            "the checkpoint's settings into model.*."
        )
    return _install_encoder(state, layout, imported.params, directory)
