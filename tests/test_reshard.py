"""Checkpoints restore onto another mesh and another device count, and the
checkpointer's multi-process and batch-size contracts."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roformer_jax.train import checkpoint as checkpoint_lib
from roformer_jax.train import metrics as metrics_lib
from roformer_jax.train.trainer import setup, train_and_evaluate, train_loop

from helpers import ROOT, smoke_config

NUM_STEPS = 6
STOP_STEP = 3
# One loss row per step, one evaluation, and checkpoints only where the run
# stops or ends.
RUN_OVERRIDES = {
    "train__num_train_steps": NUM_STEPS,
    "train__log_every_steps": 1,
    "train__eval_every_steps": NUM_STEPS,
    "train__checkpoint_every_steps": 100,
}
# Float32 tolerance for runs whose reductions (gradient sums over the batch
# shards, norms over parameter shards) run in another order on another mesh.
RTOL = 1e-5
ATOL = 1e-6


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@dataclasses.dataclass(frozen=True)
class EightDeviceRuns:
    straight: pathlib.Path  # Trained to NUM_STEPS without stopping.
    stopped: pathlib.Path  # Stopped after STOP_STEP, with its checkpoint.
    saved_state: object  # The stopped run's state as saved, in numpy arrays.


@pytest.fixture(scope="module")
def eight_device_runs(tfds_dir, tmp_path_factory) -> EightDeviceRuns:
    """Train the default mesh, (8, 1, 1) on 8 devices, to STOP_STEP and copy
    the workdir. Then train the same run on to NUM_STEPS.

    The second `train_loop` call continues the state in memory, so the
    run's values are those of a run that never stopped.
    """
    root = tmp_path_factory.mktemp("eight_devices")
    config = smoke_config(tfds_dir, **RUN_OVERRIDES)
    run = setup(config, str(root / "straight"))
    try:
        assert run.mesh.devices.shape == (8, 1, 1)
        train_loop(run, stop_after_step=STOP_STEP)
        saved_state = jax.device_get(run.state)
        shutil.copytree(root / "straight", root / "stopped")
        run.start_step = STOP_STEP
        train_loop(run)
    finally:
        run.checkpointer.close()
        run.writer.close()
    return EightDeviceRuns(root / "straight", root / "stopped", saved_state)


def losses_by_step(workdir) -> dict[int, float]:
    return {
        row["step"]: row["train/loss"]
        for row in metrics_lib.read_metrics(str(workdir))
        if "train/loss" in row
    }


def path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def expected_parameter_shardings(run) -> dict[str, NamedSharding]:
    """Map each parameter path to the sharding that `config.mesh.axis_rules`
    give its logical axes on `run.mesh`."""
    seq_len = run.config.data.seq_len
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    boxed = jax.eval_shape(
        lambda: run.model.init(
            {"params": jax.random.PRNGKey(0)},
            tokens=tokens,
            positions=positions,
            segment_ids=jnp.ones_like(tokens),
        )["params"]
    )
    rules = {
        logical: tuple(mesh) if isinstance(mesh, list | tuple) else mesh
        for logical, mesh in run.config.mesh.axis_rules
    }
    shardings = {}
    logical_specs = nn.get_partition_spec(boxed)
    for path, spec in jax.tree_util.tree_leaves_with_path(
        logical_specs, is_leaf=lambda leaf: isinstance(leaf, PartitionSpec)
    ):
        mesh_axes = [None if name is None else rules[name] for name in spec]
        shardings[path_name(path)] = NamedSharding(run.mesh, PartitionSpec(*mesh_axes))
    return shardings


def moment_parameter_name(path) -> str | None:
    """Return the parameter path of an Adam first or second moment leaf of
    the optimizer state, or None for other leaves (counts)."""
    for index, key in enumerate(path):
        if getattr(key, "name", None) in ("mu", "nu"):
            return path_name(path[index + 1 :])
    return None


def test_restore_onto_other_mesh(tfds_dir, eight_device_runs, tmp_path):
    """A run checkpointed on mesh (8, 1, 1) resumes on (2, 4, 1).

    After the restore, every parameter and Adam moment has the (2, 4, 1)
    sharding of its logical axes, and every value equals the saved one bit
    for bit. The finished run matches the uninterrupted (8, 1, 1) run to
    float32 tolerance, not bit for bit: gradients are summed over other
    batch shards, in another order, on the new mesh.
    """
    workdir = tmp_path / "run"
    shutil.copytree(eight_device_runs.stopped, workdir)
    config = smoke_config(
        tfds_dir, mesh__data=2, mesh__fsdp=4, mesh__tensor=1, **RUN_OVERRIDES
    )

    run = setup(config, str(workdir))
    try:
        assert run.start_step == STOP_STEP
        assert run.mesh.devices.shape == (2, 4, 1)
        expected = expected_parameter_shardings(run)
        params = jax.tree_util.tree_leaves_with_path(run.state.params)
        assert {path_name(path) for path, _ in params} == set(expected)
        for path, leaf in params:
            name = path_name(path)
            assert leaf.sharding.is_equivalent_to(expected[name], leaf.ndim), name
        moments = [
            (moment_parameter_name(path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(run.state.opt_state)
            if moment_parameter_name(path) is not None
        ]
        assert len(moments) == 2 * len(expected)
        for name, leaf in moments:
            assert leaf.sharding.is_equivalent_to(expected[name], leaf.ndim), name
        # The fsdp axis really splits the arrays: each device stores D / 4
        # columns of the token embedding's [V, D] table.
        embedding = run.state.params["transformer"]["embeddings"]["token"]["embedding"]
        local_shape = embedding.addressable_shards[0].data.shape
        assert local_shape == (embedding.shape[0], embedding.shape[1] // 4)

        restored = jax.tree_util.tree_leaves_with_path(jax.device_get(run.state))
        saved = jax.tree.leaves(eight_device_runs.saved_state)
        assert len(restored) == len(saved)
        for (path, value), saved_value in zip(restored, saved, strict=True):
            np.testing.assert_array_equal(value, saved_value, err_msg=path_name(path))
    finally:
        run.checkpointer.close()
        run.writer.close()

    train_and_evaluate(config, str(workdir))
    resumed = checkpoint_lib.restore_params(str(workdir))
    straight = checkpoint_lib.restore_params(str(eight_device_runs.straight))
    assert resumed.step == NUM_STEPS
    for path, value in jax.tree_util.tree_leaves_with_path(resumed.params):
        reference = straight.params
        for key in path:
            reference = reference[key.key]
        np.testing.assert_allclose(
            value, reference, rtol=RTOL, atol=ATOL, err_msg=path_name(path)
        )


def test_resume_with_fewer_devices(tfds_dir, eight_device_runs, tmp_path):
    """A run stopped on 8 devices resumes in a process with 4 devices.

    `mesh.data=-1` resolves to 8 and then to 4, with the global batch size
    unchanged, so the resumed steps train on the same batches: their losses
    equal the uninterrupted 8-device run's to float32 tolerance.
    """
    workdir = tmp_path / "run"
    shutil.copytree(eight_device_runs.stopped, workdir)
    overrides = [
        f"--config.{dotted.replace('__', '.')}={value}"
        for dotted, value in RUN_OVERRIDES.items()
    ]
    config = smoke_config(tfds_dir)
    command = [
        sys.executable,
        "-m",
        "roformer_jax.main",
        "--config=configs/tiny_shakespeare.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.manual_dir={config.data.manual_dir}",
        f"--config.data.data_dir={tfds_dir}",
        "--config.train.tensorboard=False",
        *overrides,
    ]
    environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Mesh {'data': 4, 'fsdp': 1, 'tensor': 1} over 4 devices" in result.stderr
    assert f"Restored checkpoint at step {STOP_STEP}." in result.stderr
    resumed = losses_by_step(workdir)
    straight = losses_by_step(eight_device_runs.straight)
    assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
    later_steps = range(STOP_STEP + 1, NUM_STEPS + 1)
    np.testing.assert_allclose(
        [resumed[step] for step in later_steps],
        [straight[step] for step in later_steps],
        rtol=RTOL,
    )


# The checkpointer alone, on a small state.


def small_state(mesh: Mesh) -> dict[str, jax.Array]:
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return {
        "w": jax.device_put(np.arange(16.0, dtype=np.float32).reshape(8, 2), sharding),
        "count": jax.device_put(np.int32(7), NamedSharding(mesh, PartitionSpec())),
    }


def eight_device_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:8]), ("data",))


def save_small_state(directory, global_batch_size: int | None) -> dict:
    """Save `small_state` as step 1 with this batch size; return the state."""
    writer = checkpoint_lib.Checkpointer(
        str(directory), max_to_keep=1, global_batch_size=global_batch_size
    )
    state = small_state(eight_device_mesh())
    writer.save(1, state, {"next_step": 1})
    writer.close()
    return state


def restore_small_state(directory, state, global_batch_size: int | None):
    """Restore step 1 into the layout of `state`; return (state, data state)."""
    reader = checkpoint_lib.Checkpointer(
        str(directory), max_to_keep=1, global_batch_size=global_batch_size
    )
    try:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        return reader.restore(1, abstract)
    finally:
        reader.close()


def test_changed_global_batch_size_rejected(tmp_path):
    state = save_small_state(tmp_path, global_batch_size=8)

    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as error:
        restore_small_state(tmp_path, state, global_batch_size=16)

    assert "written with data.global_batch_size=8" in str(error.value)
    assert "this config sets data.global_batch_size=16" in str(error.value)


def test_checkpoint_without_batch_size_restores(tmp_path):
    """Checkpoints written before the global batch size was stored restore
    under a checkpointer that checks it."""
    state = save_small_state(tmp_path, global_batch_size=None)

    restored, data_state = restore_small_state(tmp_path, state, global_batch_size=16)

    assert data_state == {"next_step": 1}
    np.testing.assert_array_equal(restored["w"], np.asarray(state["w"]))


def test_stored_batch_size_restores(tmp_path):
    state = save_small_state(tmp_path, global_batch_size=8)

    _, data_state = restore_small_state(tmp_path, state, global_batch_size=8)

    assert data_state == {"next_step": 1, "global_batch_size": 8}


def test_leaf_without_sharding_restores_replicated(tmp_path):
    """A target leaf with no sharding is read replicated over all devices,
    not onto the saved layout."""
    state = small_state(Mesh(np.asarray(jax.devices()[:4]), ("data",)))
    writer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
    writer.save(1, state, {"next_step": 1})
    writer.close()

    reader = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
    abstract = {
        "w": jax.ShapeDtypeStruct((8, 2), np.float32),
        "count": np.zeros((), np.int32),
    }
    restored, _ = reader.restore(1, abstract)
    reader.close()
    for name, leaf in restored.items():
        assert leaf.sharding.is_fully_replicated, name
        assert len(leaf.sharding.device_set) == jax.device_count(), name
    np.testing.assert_array_equal(restored["w"], np.asarray(state["w"]))
    assert int(restored["count"]) == 7


@pytest.mark.parametrize("process_index", [0, 1])
def test_set_aside_renames_on_process_zero(tmp_path, monkeypatch, process_index):
    """Only process 0 renames the folder, between two barriers that every
    process passes; all processes return the same new path."""
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
    checkpointer.save(1, small_state(eight_device_mesh()), {"next_step": 1})
    checkpointer.wait()
    events = []
    real_rename = os.rename

    def record_barrier(name):
        events.append(("barrier", name))

    def record_rename(source, target):
        events.append(("rename", os.path.basename(target)))
        real_rename(source, target)

    monkeypatch.setattr(multihost_utils, "sync_global_devices", record_barrier)
    monkeypatch.setattr(os, "rename", record_rename)
    monkeypatch.setattr(jax, "process_index", lambda: process_index)
    moved_to = checkpointer.set_aside(1)
    monkeypatch.undo()
    checkpointer.close()

    assert moved_to == str(tmp_path / "1.unreadable")
    barriers = [event for event in events if event[0] == "barrier"]
    assert len(barriers) == 2
    renames = [event for event in events if event[0] == "rename"]
    if process_index == 0:
        assert events.index(renames[0]) == 1
        assert (tmp_path / "1.unreadable").is_dir()
    else:
        assert renames == []
        assert (tmp_path / "1").is_dir()


class FailingCommit:
    """A commit future whose write fails, as on a full disk."""

    def result(self, timeout: float | None = None) -> None:
        raise OSError("disk full (injected)")


def test_failed_background_write_keeps_previous(tmp_path, monkeypatch):
    """With `max_to_keep=1`, a save whose background write fails after
    `save` returned leaves the previous checkpoint, because Orbax deletes
    it only once the new one is finalized."""
    state = small_state(eight_device_mesh())
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
    checkpointer.save(1, state, {"next_step": 1})
    checkpointer.wait()
    write_arrays = ocp.StandardCheckpointHandler.async_save

    async def failing_async_save(self, *args, **kwargs):
        futures = await write_arrays(self, *args, **kwargs)
        return [*(futures or []), FailingCommit()]

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_async_save)
    checkpointer.save(2, state, {"next_step": 2})
    with pytest.raises(OSError, match="disk full"):
        checkpointer.wait()
    monkeypatch.undo()
    checkpointer.close()

    reader = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
    steps = reader.all_steps()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored, data_state = reader.restore(1, abstract)
    reader.close()
    assert steps == [1]
    assert data_state == {"next_step": 1}
    np.testing.assert_array_equal(restored["w"], np.asarray(state["w"]))


def test_resume_with_other_batch_size_stops(tfds_dir, eight_device_runs, tmp_path):
    """The trainer passes the global batch size to the checkpointer, so a
    resume with another one stops with both values instead of training on
    batches the stopped run never saw."""
    workdir = tmp_path / "resumed"
    shutil.copytree(eight_device_runs.stopped, workdir)
    config = smoke_config(tfds_dir, **RUN_OVERRIDES)
    stored = config.data.global_batch_size
    with config.unlocked():
        config.data.global_batch_size = 2 * stored

    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as raised:
        train_and_evaluate(config, str(workdir))

    assert str(stored) in str(raised.value)
    assert str(2 * stored) in str(raised.value)
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(STOP_STEP)]


def test_out_of_memory_on_restore_keeps_the_checkpoint(
    tfds_dir, eight_device_runs, tmp_path, monkeypatch
):
    """Running out of memory while reading does not mean the files are
    damaged, so the checkpoint stays (moving it aside restarts at step 0)."""
    workdir = tmp_path / "resumed"
    shutil.copytree(eight_device_runs.stopped, workdir)

    def exhausted(self, step, abstract_state):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore", exhausted)

    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        train_and_evaluate(smoke_config(tfds_dir, **RUN_OVERRIDES), str(workdir))

    assert sorted(os.listdir(workdir / "checkpoints")) == [str(STOP_STEP)]
