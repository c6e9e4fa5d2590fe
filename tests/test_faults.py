"""Faults during training: non-finite steps, SIGTERM, unreadable checkpoints,
failed saves, and `kill -9` (through experiments/fault_injection.py)."""

import dataclasses
import logging
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny_shakespeare
from roformer_jax.train import checkpoint as checkpoint_lib
from roformer_jax.train import metrics as metrics_lib
from roformer_jax.train.faults import NonFiniteError
from roformer_jax.train.trainer import setup, train_and_evaluate, train_loop
from roformer_jax.train.validation import ConfigError

from helpers import ROOT, SHARED_COPY


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def smoke_config(tfds_dir: str, **train):
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.data.data_dir = tfds_dir
        config.data.manual_dir = str(SHARED_COPY)
        config.train.tensorboard = False
        config.train.update(train)
    return config


class PoisonedBatches:
    """Wraps a batch source; the batches at `indices` get NaN loss weights,
    so their loss and gradients are NaN."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = set(indices)

    def batch(self, step: int):
        batch = dict(self.source.batch(step))
        if step in self.indices:
            batch["weights"] = np.full_like(batch["weights"], np.nan)
        return batch


def run_with_poison(config, workdir, indices):
    run = setup(config, str(workdir))
    run.data = dataclasses.replace(
        run.data, train=PoisonedBatches(run.data.train, indices)
    )
    try:
        return train_loop(run)
    finally:
        run.checkpointer.close()
        run.writer.close()


def metric_rows(workdir) -> list[dict]:
    return [
        row for row in metrics_lib.read_metrics(str(workdir)) if "train/loss" in row
    ]


# Non-finite steps.


def test_nonfinite_step_stops_with_its_step_and_batch(tfds_dir, tmp_path):
    config = smoke_config(
        tfds_dir, num_train_steps=6, log_every_steps=1, checkpoint_every_steps=2
    )
    with pytest.raises(NonFiniteError, match=r"step 4 \(training batch 3\)") as error:
        run_with_poison(config, tmp_path, indices={3})
    assert "the last checkpoint, step 2, is intact" in str(error.value)
    checkpointer = checkpoint_lib.Checkpointer(
        str(tmp_path / "checkpoints"), max_to_keep=3
    )
    assert checkpointer.all_steps() == [2]
    checkpointer.close()


def test_nonfinite_step_stops_before_its_checkpoint(tfds_dir, tmp_path):
    """The bad step is a checkpoint step; its parameters are never saved."""
    config = smoke_config(
        tfds_dir, num_train_steps=6, log_every_steps=3, checkpoint_every_steps=2
    )
    with pytest.raises(NonFiniteError, match=r"step 2 \(training batch 1\)"):
        run_with_poison(config, tmp_path, indices={1})
    assert not (tmp_path / "checkpoints" / "2").exists()


def test_skip_keeps_bad_step_parameters(tfds_dir, tmp_path, caplog):
    config = smoke_config(
        tfds_dir, num_train_steps=6, log_every_steps=1, nonfinite_policy="skip"
    )
    with caplog.at_level(logging.WARNING):
        run_with_poison(config, tmp_path, indices={2})
    rows = {row["step"]: row for row in metric_rows(tmp_path)}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[3]["train/finite"] == 0.0
    assert rows[3]["train/param_norm"] == rows[2]["train/param_norm"]
    assert rows[4]["train/param_norm"] != rows[3]["train/param_norm"]
    assert "step 3 (training batch 2); the update was skipped" in caplog.text


def test_skip_matches_clean_run_before(tfds_dir, tmp_path):
    """Skipping step 3 changes nothing before it: step 2's parameters are
    those of a clean run."""
    config = smoke_config(
        tfds_dir, num_train_steps=4, log_every_steps=1, nonfinite_policy="skip"
    )
    run_with_poison(config, tmp_path / "skipped", indices={2})
    run_with_poison(config, tmp_path / "clean", indices=set())
    skipped = {row["step"]: row for row in metric_rows(tmp_path / "skipped")}
    clean = {row["step"]: row for row in metric_rows(tmp_path / "clean")}
    assert skipped[2]["train/param_norm"] == clean[2]["train/param_norm"]
    assert skipped[3]["train/param_norm"] == clean[2]["train/param_norm"]


def test_skip_stops_after_limit(tfds_dir, tmp_path):
    config = smoke_config(
        tfds_dir,
        num_train_steps=8,
        log_every_steps=1,
        nonfinite_policy="skip",
        max_consecutive_skips=2,
    )
    with pytest.raises(NonFiniteError, match="3 consecutive steps up to step 4"):
        run_with_poison(config, tmp_path, indices={1, 2, 3})


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"nonfinite_policy": "ignore"}, "train.nonfinite_policy='ignore' is invalid"),
        ({"max_consecutive_skips": 0}, "train.max_consecutive_skips=0 is invalid"),
    ],
)
def test_nonfinite_settings_are_checked(tfds_dir, tmp_path, train, message):
    with pytest.raises(ConfigError, match=message):
        setup(smoke_config(tfds_dir, **train), str(tmp_path))


# SIGTERM.


def test_sigterm_saves_and_stops_in_process(tfds_dir, tmp_path):
    """SIGTERM during step 3 of 8: the loop saves checkpoint 3 and returns."""
    config = smoke_config(tfds_dir, num_train_steps=8, checkpoint_every_steps=100)
    run = setup(config, str(tmp_path))
    train_step = run.steps.train

    def signalling_step(state, batch):
        if int(state.step) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(state, batch)

    run.steps = dataclasses.replace(run.steps, train=signalling_step)
    try:
        train_loop(run)
    finally:
        run.checkpointer.close()
        run.writer.close()
    checkpointer = checkpoint_lib.Checkpointer(
        str(tmp_path / "checkpoints"), max_to_keep=3
    )
    assert checkpointer.all_steps() == [3]
    checkpointer.close()


def test_sigterm_exits_with_status_zero(tfds_dir, tmp_path):
    """The command-line trainer, sent SIGTERM after its first step, saves a
    checkpoint and exits 0; the same command then finishes the run."""
    command = [
        sys.executable,
        "-m",
        "roformer_jax.main",
        "--config=configs/tiny_shakespeare.py:smoke",
        f"--workdir={tmp_path}",
        f"--config.data.manual_dir={SHARED_COPY}",
        f"--config.data.data_dir={tfds_dir}",
        "--config.train.tensorboard=False",
        "--config.train.num_train_steps=100000",
        "--config.train.checkpoint_every_steps=100000",
        "--config.train.eval_every_steps=100000",
        "--config.train.log_every_steps=1",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "step 2/100000" in line:
            process.send_signal(signal.SIGTERM)
            break
    _, rest = process.communicate(timeout=300)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "Received SIGTERM: saved a checkpoint at step" in output
    checkpointer = checkpoint_lib.Checkpointer(
        str(tmp_path / "checkpoints"), max_to_keep=3
    )
    steps = checkpointer.all_steps()
    checkpointer.close()
    assert len(steps) == 1
    assert 2 <= steps[0] < 100000


# Unreadable checkpoints and failed saves.


def final_params(config, workdir):
    run = setup(config, str(workdir))
    params = jax.device_get(run.state.params)
    step = run.start_step
    run.checkpointer.close()
    return step, params


def corrupt(step_dir: pathlib.Path) -> None:
    """Truncate every data file of a checkpoint to half its size."""
    files = [path for path in step_dir.rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def test_unreadable_latest_checkpoint_falls_back(tfds_dir, tmp_path, caplog):
    config = smoke_config(tfds_dir, num_train_steps=6)
    train_and_evaluate(config, str(tmp_path / "straight"))
    train_and_evaluate(config, str(tmp_path / "broken"), stop_after_step=4)
    corrupt(tmp_path / "broken" / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING):
        step, _ = final_params(config, tmp_path / "broken")
    assert step == 2
    assert "Checkpoint 4 is unreadable" in caplog.text
    assert (tmp_path / "broken" / "checkpoints" / "4.unreadable").is_dir()
    # Training on from step 2 rewrites step 4 and ends where the clean run did.
    train_and_evaluate(config, str(tmp_path / "broken"))
    _, straight = final_params(config, tmp_path / "straight")
    _, resumed = final_params(config, tmp_path / "broken")
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_failed_save_keeps_the_last_good_checkpoint(tfds_dir, tmp_path, monkeypatch):
    """With one checkpoint kept, a save that fails leaves the previous one."""
    config = smoke_config(tfds_dir, num_train_steps=2, max_checkpoints_to_keep=1)
    train_and_evaluate(config, str(tmp_path))

    def failing_save(self, *args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_save)
    with config.unlocked():
        config.train.num_train_steps = 4
    with pytest.raises(Exception, match="disk full"):
        train_and_evaluate(config, str(tmp_path))
    monkeypatch.undo()
    step, params = final_params(config, tmp_path)
    assert step == 2
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


# kill -9.


def test_kill_nine_runs_resume_to_identical_parameters(tfds_dir, tmp_path):
    """experiments/fault_injection.py kills the trainer twice at random
    steps; its final parameters equal an uninterrupted run's, bit for bit."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.fault_injection",
            f"--root={tmp_path}",
            "--kills=2",
            "--num_train_steps=12",
            f"--manual_dir={SHARED_COPY}",
            f"--data_dir={tfds_dir}",
            "--seed=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final parameters: identical" in result.stdout
    assert result.stdout.count("killed at step") == 2
