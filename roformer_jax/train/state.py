"""The train state, its sharded initialisation and its abstract shape."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes: step, parameters, optimizer state."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The shapes and shardings of a train state, and how to initialise one."""

    shardings: Any  # A TrainState of NamedSharding.
    abstract: Any  # A TrainState of jax.ShapeDtypeStruct with shardings.
    initialize: Callable[[], TrainState]  # Jitted; writes straight into shards.


def _dummy_inputs(batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    positions = jnp.broadcast_to(
        jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len)
    )
    return {
        "tokens": tokens,
        "positions": positions,
        "segment_ids": jnp.ones_like(tokens),
    }


def plan_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    rules,
    *,
    seq_len: int,
) -> StateLayout:
    """Work out the sharded layout of the state without allocating it.

    Parameters come out of `model.init` boxed with logical axes; the optimizer
    state is built from the boxed tree so its moments inherit those axes.
    `jax.eval_shape` gives the layout, so a run that restores a checkpoint
    never initialises, and `initialize` writes each array into its shard.
    """
    dummy = _dummy_inputs(1, seq_len)

    def init_boxed(key):
        params = model.init({"params": key}, **dummy)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        )

    boxed = jax.eval_shape(init_boxed, rng)
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    init = jax.jit(lambda key: nn.meta.unbox(init_boxed(key)), out_shardings=shardings)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=sharding
        ),
        nn.meta.unbox(boxed),
        shardings,
    )
    return StateLayout(
        shardings=shardings, abstract=abstract, initialize=lambda: init(rng)
    )


def parameter_count(params) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def parameter_table(params) -> str:
    """Format one line per parameter (path, shape, count), then the total."""
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        rows.append(f"  {name:<60} {str(tuple(leaf.shape)):<18} {leaf.size:>12,}")
    rows.append(f"  {'total':<60} {'':<18} {parameter_count(params):>12,}")
    return "\n".join(rows)
