"""Orbax checkpoints of the train state and the input-stream position."""

import logging
import os

import jax
import orbax.checkpoint as ocp

from roformer_jax.train.state import TrainState

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ from the model and optimizer being built."""


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
        stored = _shapes_by_path(self._manager.item_metadata(step)["state"])
        expected = _shapes_by_path(abstract_state)
        differences = _describe_differences(stored, expected)
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


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def _describe_differences(
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
