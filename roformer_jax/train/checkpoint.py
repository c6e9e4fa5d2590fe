"""Orbax checkpoints of the train state and the input-stream position.

A checkpoint contains two items: "state", the train state as sharded
arrays, and "data", a small JSON dict with the input-stream position
(`next_step`) and, when the `Checkpointer` was given one, the global batch
size of the run that wrote it. Arrays are stored with their global shapes,
so a checkpoint restores onto another mesh or device count: Orbax reads each
array straight into the shards of the target sharding.
"""

import dataclasses
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roformer_jax.train.state import TrainState

logger = logging.getLogger(__name__)

# The key of the global batch size in the "data" item. Checkpoints written
# before it was stored lack it, and restore without the check.
GLOBAL_BATCH_SIZE_KEY = "global_batch_size"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the run being built: its arrays differ from
    the model and optimizer, or it was written with another global batch size."""


class MissingCheckpointError(ValueError):
    """A workdir contains no checkpoint to restore."""


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints and restores one into the
    shardings of an abstract state. The trainer decides when to save.

    Multi-process runs: every process must call `save`, `restore`,
    `set_aside`, `wait` and `close`, in the same order and for the same
    steps, because Orbax writes each process's shards and synchronises
    the processes inside these calls. A call made on only some processes
    blocks at Orbax's barriers.

    Deletion: with `max_to_keep=N`, Orbax (0.12.8, `CheckpointManager.save`
    and `_finalize`) deletes the oldest checkpoint only after the new one is
    finalized, so a save that fails leaves the previous checkpoints on disk.

    `global_batch_size`, when given, is stored in each checkpoint's "data"
    item, and `restore` raises `CheckpointMismatchError` for a checkpoint
    that stored another value.
    """

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int,
        global_batch_size: int | None = None,
    ):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
        )
        self._global_batch_size = global_batch_size

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def set_aside(self, step: int) -> str:
        """Move the folder of checkpoint `step` out of the way, so a new
        checkpoint of that step can be written; return where it went.

        Every process must call it. Process 0 renames the folder, and every
        process waits at a barrier until the rename is done.
        """
        source = os.path.join(self._manager.directory, str(step))
        # All processes pick the new name before any of them renames, so
        # they all return the same path.
        multihost_utils.sync_global_devices(f"checkpoint set_aside {step} start")
        target = f"{source}.unreadable"
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = f"{source}.unreadable{suffix}"
        if jax.process_index() == 0:
            os.rename(source, target)
        multihost_utils.sync_global_devices(f"checkpoint set_aside {step} done")
        self._manager.reload()
        return target

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        """Save `state` and the input position as checkpoint `step`.

        Every process must call it with its shards of the same `state`.
        Orbax writes in the background; `wait` blocks until it is done.
        """
        data = dict(data_state)
        if self._global_batch_size is not None:
            data[GLOBAL_BATCH_SIZE_KEY] = self._global_batch_size
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
            ),
            force=True,
        )
        logger.info("Saving checkpoint at step %d.", step)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """Restore `step` into the shapes, dtypes and shardings given.

        The mesh and device count may differ from those that wrote the
        checkpoint. A leaf of `abstract_state` that carries no sharding (a
        numpy array, or a `jax.ShapeDtypeStruct` without one) is restored
        replicated over all devices.

        Raises:
          CheckpointMismatchError: the checkpoint's arrays differ from
            `abstract_state` in names or shapes (the message lists the
            differences), or it stored another global batch size.
          ValueError: Orbax failed to read the arrays.
        """
        data_state = self._restore_data(step)
        self._check_global_batch_size(step, data_state)
        stored = shapes_by_path(self._manager.item_metadata(step)["state"])
        expected = shapes_by_path(abstract_state)
        differences = describe_differences(stored, expected)
        if differences:
            raise CheckpointMismatchError(
                f"Checkpoint {step} in {self._manager.directory} does not match "
                "this config's model or optimizer:\n  "
                + "\n  ".join(differences)
                + "\nResume with the config that wrote it, or use a new --workdir."
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(restore_target(abstract_state)),
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"Reading the arrays of checkpoint {step} in "
                f"{self._manager.directory} failed ({error}). Their names and "
                "shapes match this config, so the files may be damaged. Delete "
                "the checkpoint or use a new --workdir."
            ) from error
        return restored.state, data_state

    def _restore_data(self, step: int) -> dict:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(data=ocp.args.JsonRestore())
        )
        return restored.data

    def _check_global_batch_size(self, step: int, data_state: dict) -> None:
        stored = data_state.get(GLOBAL_BATCH_SIZE_KEY)
        expected = self._global_batch_size
        if stored is None or expected is None or stored == expected:
            return
        raise CheckpointMismatchError(
            f"Checkpoint {step} in {self._manager.directory} was written with "
            f"data.global_batch_size={stored}, but this config sets "
            f"data.global_batch_size={expected}. The batch of each step depends "
            "on the global batch size, so the resumed run would not continue "
            f"the same data stream. Set data.global_batch_size={stored} to "
            "resume, or use a new --workdir."
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def restore_target(abstract_state):
    """Convert `abstract_state` to `jax.ShapeDtypeStruct`s that each carry a
    sharding, which Orbax needs to read an array onto a mesh other than the
    one that wrote it. Leaves without a sharding get a replicated one over
    all devices."""
    everywhere = NamedSharding(
        Mesh(np.asarray(jax.devices()), ("all",)), PartitionSpec()
    )

    def target(leaf):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            sharding = everywhere
        return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)

    return jax.tree.map(target, abstract_state)


@dataclasses.dataclass(frozen=True)
class RestoredParams:
    """The model parameters of a checkpoint, and where they came from."""

    params: dict
    step: int
    directory: str


def restore_params(workdir: str, mesh: Mesh | None = None) -> RestoredParams:
    """Restore only the parameters of the latest checkpoint in `workdir`.

    Each array is replicated over `mesh` (default: all local devices), so
    any model can take the parameters whatever mesh wrote them.

    Raises:
      MissingCheckpointError: `workdir` has no checkpoints/ folder or no
        checkpoint in it.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise MissingCheckpointError(
            f"{workdir!r} has no checkpoints/ folder; point it at the --workdir "
            "of a training run that saved a checkpoint."
        )
    if mesh is None:
        mesh = Mesh(jax.local_devices(), ("data",))
    manager = ocp.CheckpointManager(
        directory,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        },
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise MissingCheckpointError(
                f"{directory} contains no checkpoint; let the run save one "
                "(train.checkpoint_every_steps) first."
            )
        metadata = manager.item_metadata(step)["state"]
        replicated = NamedSharding(mesh, PartitionSpec())
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(
                tuple(leaf.shape), leaf.dtype, sharding=replicated
            ),
            metadata,
        )
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
        )
    finally:
        manager.close()
    return RestoredParams(restored.state["params"], step, directory)


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


def shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    """Map each leaf's "a/b/c" path to its shape."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def describe_differences(
    stored: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    limit: int = 10,
) -> list[str]:
    """List missing, unexpected and reshaped arrays, at most `limit` lines,
    parameters before optimizer state."""

    def ordered(names):
        return sorted(names, key=lambda name: (not name.startswith("params/"), name))

    lines = [
        f"missing from checkpoint: {name} {expected[name]}"
        for name in ordered(expected.keys() - stored.keys())
    ]
    lines += [
        f"not in this model: {name} {stored[name]}"
        for name in ordered(stored.keys() - expected.keys())
    ]
    lines += [
        f"shape of {name}: checkpoint {stored[name]}, model {expected[name]}"
        for name in ordered(stored.keys() & expected.keys())
        if stored[name] != expected[name]
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines
