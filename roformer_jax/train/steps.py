"""The jitted training and evaluation steps of any task in `tasks`.

The task supplies the forward pass and the loss; see `tasks` for the batch
layouts.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.typing import LogicalRules
from jax.sharding import Mesh

from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled train and eval steps for one mesh."""

    train: Callable[[TrainState, Batch], tuple[TrainState, dict]]
    evaluate: Callable[[object, Batch, int], dict]  # (params, batch, step)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules | None) -> Iterator[None]:
    """Bind the model's `nn.with_logical_constraint` calls to `mesh` by `rules`.

    It sets the abstract mesh and the Flax logical axis rules. Enter it inside
    the function that `jax.jit` traces, where `jax.set_mesh` raises (jax
    0.10.2). With `rules` None it sets nothing, so the constraints do nothing.
    """
    if rules is None:
        yield
        return
    with (
        jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
        nn.logical_axis_rules(rules),
    ):
        yield


def make_steps(
    task,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_shardings,
    mesh: Mesh,
    dropout_seed: int,
    *,
    skip_nonfinite: bool = False,
    rules: LogicalRules | None = None,
) -> Steps:
    """Jit the steps with explicit shardings; the train step donates its state.

    `rules` are the logical axis rules (`mesh_lib.axis_rules(config.mesh)`) that
    map the model's activation constraints to `mesh` axes while the steps are
    traced. Without them the compiler chooses every activation's sharding
    from the parameter and batch shardings alone.

    The dropout key of step s is `fold_in(PRNGKey(dropout_seed), s)`, so a
    resumed run draws the same masks as an uninterrupted one. Models with
    FAVOR+ linear attention and `favor_redraw_steps` > 0 also get a `favor`
    key that changes every `favor_redraw_steps` steps, and evaluation at step
    s uses the key that training used at s, so both see the same features.

    Every step reports `train/finite`: 1 when the loss and the gradient norm
    are finite. With `skip_nonfinite` a step where they are not keeps the
    parameters and optimizer state it started from (the step count still
    advances, so the next step takes the next batch).
    """
    base_key = jax.random.PRNGKey(dropout_seed)
    favor_key = jax.random.fold_in(base_key, 2**31 - 1)
    model_config = getattr(model, "config", None)
    redraw_steps = 0
    if (
        getattr(model_config, "attention", "softmax") == "linear"
        and model_config.linear_feature_map == "favor"
    ):
        redraw_steps = model_config.favor_redraw_steps

    def train_step(state: TrainState, batch: Batch):
        rngs = {
            "dropout": jax.random.fold_in(base_key, state.step),
            **favor_rngs(state.step),
        }

        def loss_fn(params):
            with activation_sharding(mesh, rules):
                outputs = task.forward(
                    model, params, batch, deterministic=False, rngs=rngs
                )
            sums = task.loss_sums(outputs, batch)
            return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:

            def keep_if_finite(new, old):
                return jnp.where(finite, new, old)

            params = jax.tree.map(keep_if_finite, params, state.params)
            opt_state = jax.tree.map(keep_if_finite, opt_state, state.opt_state)
        metrics = {
            "train/loss": loss,
            "train/learning_rate": schedule(state.step),
            "train/grad_norm": grad_norm,
            "train/finite": finite.astype(jnp.float32),
            "train/param_norm": optax.tree.norm(params),
            "train/update_norm": optax.tree.norm(updates),
        }
        if "correct_sum" in sums:
            metrics["train/accuracy"] = sums["correct_sum"] / jnp.maximum(
                sums["weight_sum"], 1.0
            )
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def favor_rngs(step) -> dict:
        if not redraw_steps:
            return {}
        return {"favor": jax.random.fold_in(favor_key, step // redraw_steps)}

    def eval_step(params, batch: Batch, step):
        # Evaluation after step s uses the features of the period s - 1 is in.
        rngs = favor_rngs(jnp.maximum(step - 1, 0))
        with activation_sharding(mesh, rules):
            outputs = task.forward(model, params, batch, deterministic=True, rngs=rngs)
        return task.eval_outputs(outputs, batch)

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
        in_shardings=(state_shardings.params, batch_sharding, replicated),
        out_shardings=replicated,
    )
    return Steps(train=train, evaluate=evaluate)
