"""Orbax checkpoints of the train state and the input-stream position."""

import logging
import os

import orbax.checkpoint as ocp

from roformer_jax.train.state import TrainState

logger = logging.getLogger(__name__)


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
            item_names=("state", "data"),
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
        """Restore `step` into the shapes, dtypes and shardings given."""
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
