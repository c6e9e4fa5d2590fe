"""Orbax checkpoints of the train state and the input-stream position."""

import dataclasses
import logging
import os

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roformer_jax.train.state import TrainState

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ from the model and optimizer being built."""


class MissingCheckpointError(ValueError):
    """A workdir contains no checkpoint to restore."""


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints and restores one into the
    shardings of an abstract state. The trainer decides when to save."""

    def __init__(self, directory: str, *, max_to_keep: int):
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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def set_aside(self, step: int) -> str:
        """Move the folder of checkpoint `step` out of the way, so a new
        checkpoint of that step can be written; return where it went."""
        source = os.path.join(self._manager.directory, str(step))
        target = f"{source}.unreadable"
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = f"{source}.unreadable{suffix}"
        os.rename(source, target)
        self._manager.reload()
        return target

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        """Save `state` and the input position as checkpoint `step`.

        Orbax writes in the background; `wait` blocks until it is done.
        """
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
            ),
            force=True,
        )
        logger.info("Saving checkpoint at step %d.", step)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """Restore `step` into the shapes, dtypes and shardings given.

        Raises:
          CheckpointMismatchError: the checkpoint's arrays differ from `abstract_state` in
            names or shapes; the message lists the differences.
        """
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
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"Checkpoint {step} in {self._manager.directory} does not match "
                f"this config's model or optimizer ({error}). Resume with the "
                "config that wrote it, or use a new --workdir."
            ) from error
        return restored.state, restored.data

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


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
