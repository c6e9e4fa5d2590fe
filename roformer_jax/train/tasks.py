"""What each training task puts on top of the shared trainer: the model, the
forward pass on a batch, the loss, and the evaluation metrics.

Batches are dicts of arrays whose leading axis is the batch:

- Language models (`causal_lm`, `masked_lm`): `inputs`, `positions`,
  `segment_ids` `[B, T]`, and `targets`, `weights` `[B, T]`, or `[B, P]`
  with `prediction_positions` `[B, P]` when only P positions are predicted.
- Classification and regression: `inputs`, `positions`, `segment_ids`,
  `token_types` `[B, T]` (`[B, C, T]` for multiple choice), `labels` `[B]`
  (int32 class, or float32 target for regression) and `weights` `[B]`, which
  is 0 on the rows that pad the last evaluation batch.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roformer_jax import metrics as metrics_lib
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel, MultipleChoice, SequenceClassifier

Batch = dict[str, jax.Array]


def weighted_cross_entropy(logits, targets, weights):
    """Return the summed loss, correct count and weight of a batch.

    The loss runs in float32. A prediction is correct when the target's logit
    is the largest, tied or not. The target's logit is picked with a one-hot
    mask rather than a gather, and correctness reuses the softmax's maximum
    rather than an argmax. On the XLA CPU backend (jax 0.10.2), the gather's
    gradient became a scatter and a transpose of the `[B, T, V]` logits, and
    the argmax another pass over them. Without them, the masked-LM train step
    of `benchmarks/shapes.py` config A took 1.75 s instead of 1.77 s (medians
    of 5; the machine's noise is larger).
    """
    logits = logits.astype(jnp.float32)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    log_normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    is_target = targets[..., None] == jnp.arange(logits.shape[-1])
    target_shifted = jnp.sum(jnp.where(is_target, shifted, 0.0), axis=-1)
    losses = log_normalizer - target_shifted
    correct = (target_shifted >= 0.0).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


@dataclasses.dataclass(frozen=True)
class LanguageModelTask:
    """Next-token (causal) or masked-token prediction with the tied LM head."""

    name: str  # causal_lm or masked_lm
    unit: str = "character"  # What a causal LM token is: character or byte.

    def build_model(self, model_config: ModelConfig) -> nn.Module:
        return LanguageModel(model_config)

    def forward(self, model, params, batch: Batch, *, deterministic, rngs=None):
        return model.apply(
            {"params": params},
            batch["inputs"],
            batch["positions"],
            batch["segment_ids"],
            batch.get("token_types"),
            batch.get("prediction_positions"),
            deterministic=deterministic,
            rngs=rngs,
        )

    def loss_sums(self, outputs, batch: Batch) -> dict:
        return weighted_cross_entropy(outputs, batch["targets"], batch["weights"])

    def eval_outputs(self, outputs, batch: Batch) -> dict:
        return self.loss_sums(outputs, batch)

    def summarize(self, collected: dict) -> dict[str, float]:
        """Turn the summed evaluation outputs into metrics."""
        weight = max(collected["weight_sum"], 1.0)
        loss = collected["loss_sum"] / weight
        result = {
            "eval/loss": loss,
            "eval/accuracy": collected["correct_sum"] / weight,
            "eval/perplexity": math.exp(min(loss, 50.0)),
        }
        if self.name == "causal_lm":
            result[f"eval/bits_per_{self.unit}"] = loss / math.log(2.0)
        return result


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Sequence classification, regression (`num_classes` 0) or multiple choice.

    `metric_names` are names in `roformer_jax.metrics.METRICS`, computed over
    the whole evaluation split from the predictions.
    """

    num_classes: int
    metric_names: tuple[str, ...]
    multiple_choice: bool = False
    name: str = "classification"

    @property
    def regression(self) -> bool:
        return self.num_classes == 0

    def build_model(self, model_config: ModelConfig) -> nn.Module:
        if self.multiple_choice:
            return MultipleChoice(model_config)
        return SequenceClassifier(model_config, num_outputs=max(self.num_classes, 1))

    def forward(self, model, params, batch: Batch, *, deterministic, rngs=None):
        outputs = model.apply(
            {"params": params},
            batch["inputs"],
            batch["positions"],
            batch["segment_ids"],
            batch.get("token_types"),
            deterministic=deterministic,
            rngs=rngs,
        )
        return outputs[:, 0] if self.regression else outputs

    def loss_sums(self, outputs, batch: Batch) -> dict:
        weights = batch["weights"]
        if self.regression:
            errors = jnp.square(outputs - batch["labels"])
            return {
                "loss_sum": jnp.sum(errors * weights),
                "weight_sum": jnp.sum(weights),
            }
        return weighted_cross_entropy(outputs, batch["labels"], weights)

    def eval_outputs(self, outputs, batch: Batch) -> dict:
        sums = self.loss_sums(outputs, batch)
        predictions = outputs if self.regression else jnp.argmax(outputs, axis=-1)
        return {
            **sums,
            "predictions": predictions,
            "labels": batch["labels"],
            "weights": batch["weights"],
        }

    def summarize(self, collected: dict) -> dict[str, float]:
        keep = collected["weights"] > 0
        predictions = collected["predictions"][keep]
        labels = collected["labels"][keep]
        result = {
            "eval/loss": collected["loss_sum"] / max(collected["weight_sum"], 1.0),
            "eval/examples": float(keep.sum()),
        }
        for name, value in metrics_lib.compute_metrics(
            self.metric_names, predictions, labels
        ).items():
            result[f"eval/{name}"] = value
        return result


def collect_eval_outputs(outputs: list[dict]) -> dict:
    """Sum the `*_sum` entries of per-batch outputs; concatenate the rest."""
    collected: dict = {}
    for key in outputs[0]:
        values = [np.asarray(output[key]) for output in outputs]
        if key.endswith("_sum"):
            collected[key] = float(np.sum(values))
        else:
            collected[key] = np.concatenate(values)
    return collected
