"""The jitted training and evaluation steps of a causal language model.

Batches are dicts of `[B, T]` arrays: `inputs`, `targets`, `positions`,
`segment_ids` (int32) and `weights` (float32, 0 on padding).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def weighted_cross_entropy(logits, targets, weights):
    """Return the summed loss, correct count and weight of a batch."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


def _forward(model: nn.Module, params, batch: Batch, *, deterministic: bool, rngs=None):
    return model.apply(
        {"params": params},
        batch["inputs"],
        batch["positions"],
        batch["segment_ids"],
        deterministic=deterministic,
        rngs=rngs,
    )


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled train and eval steps for one mesh."""

    train: Callable[[TrainState, Batch], tuple[TrainState, dict]]
    evaluate: Callable[[object, Batch], dict]


def make_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_shardings,
    mesh: Mesh,
    dropout_seed: int,
) -> Steps:
    """Jit the steps with explicit shardings; the train step donates its state.

    The dropout key of step s is `fold_in(PRNGKey(dropout_seed), s)`, so a
    resumed run draws the same masks as an uninterrupted one.
    """
    base_key = jax.random.PRNGKey(dropout_seed)

    def train_step(state: TrainState, batch: Batch):
        dropout_key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            logits = _forward(
                model, params, batch, deterministic=False, rngs={"dropout": dropout_key}
            )
            sums = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
            return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "train/loss": loss,
            "train/accuracy": sums["correct_sum"]
            / jnp.maximum(sums["weight_sum"], 1.0),
            "train/learning_rate": schedule(state.step),
            "train/grad_norm": optax.tree.norm(grads),
            "train/param_norm": optax.tree.norm(params),
            "train/update_norm": optax.tree.norm(updates),
        }
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def eval_step(params, batch: Batch):
        logits = _forward(model, params, batch, deterministic=True)
        return weighted_cross_entropy(logits, batch["targets"], batch["weights"])

    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)
    train = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        eval_step,
        in_shardings=(state_shardings.params, batch_sharding),
        out_shardings=replicated,
    )
    return Steps(train=train, evaluate=evaluate)
