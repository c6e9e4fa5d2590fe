"""End-to-end tests of the trainer on a tiny Tiny Shakespeare config."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny_shakespeare
from roformer_jax.train import checkpoint as checkpoint_lib
from roformer_jax.train import metrics as metrics_lib
from roformer_jax.train.optimizer import learning_rate_schedule
from roformer_jax.train.trainer import setup, train_and_evaluate
from roformer_jax.train.validation import ConfigError, validate_config

from helpers import SHARED_COPY, smoke_config, train_losses


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """One prepared TFDS data dir shared by every test in the session."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def test_train_step_lowers_loss(tfds_dir, tmp_path):
    config = smoke_config(tfds_dir, model__dropout_rate=0.0, optim__warmup_steps=0)
    run = setup(config, str(tmp_path))
    batch = jax.tree.map(jax.numpy.asarray, run.data.train.batch(0))
    from roformer_jax.train.trainer import _global_batch

    losses = []
    for _ in range(5):
        run.state, metrics = run.steps.train(run.state, _global_batch(batch, run.mesh))
        losses.append(float(metrics["train/loss"]))
    run.checkpointer.close()
    assert losses[-1] < losses[0]


def test_run_writes_metrics_and_checkpoints(tfds_dir, tmp_path):
    config = smoke_config(tfds_dir, train__tensorboard=True)
    final = train_and_evaluate(config, str(tmp_path))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    rows = metrics_lib.read_metrics(str(tmp_path))
    keys = set().union(*rows)
    for key in (
        "train/loss",
        "train/learning_rate",
        "eval/loss",
        "eval/bits_per_character",
        "perf/tokens_per_second",
        "perf/mfu",
    ):
        assert key in keys
    assert all("step" in row for row in rows)
    schedule = learning_rate_schedule(config.optim, config.train.num_train_steps)
    for row in rows:
        if "train/learning_rate" in row:
            # The step that produced row["step"] ran with the rate of step - 1.
            expected = float(schedule(row["step"] - 1))
            assert row["train/learning_rate"] == pytest.approx(expected)
    assert final["eval/bits_per_character"] == pytest.approx(
        final["eval/loss"] / np.log(2)
    )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))


def test_data_mesh_matches_single_device(tfds_dir, tmp_path):
    one = smoke_config(tfds_dir, mesh__data=1)
    two = smoke_config(tfds_dir, mesh__data=2)
    train_and_evaluate(one, str(tmp_path / "one"))
    train_and_evaluate(two, str(tmp_path / "two"))
    np.testing.assert_allclose(
        train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), rtol=1e-5
    )


def _final_params(workdir, config):
    run = setup(config, str(workdir))
    params = jax.device_get(run.state.params)
    run.checkpointer.close()
    return params


def test_resume_is_bitwise_identical(tfds_dir, tmp_path):
    uninterrupted = smoke_config(tfds_dir, train__num_train_steps=6)
    train_and_evaluate(uninterrupted, str(tmp_path / "straight"))

    train_and_evaluate(uninterrupted, str(tmp_path / "resumed"), stop_after_step=3)
    train_and_evaluate(uninterrupted, str(tmp_path / "resumed"))

    straight = _final_params(tmp_path / "straight", uninterrupted)
    resumed = _final_params(tmp_path / "resumed", uninterrupted)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (
        train_losses(tmp_path / "resumed")[-1]
        == train_losses(tmp_path / "straight")[-1]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mesh__data": 16}, "needs 16 devices but 8 are available"),
        ({"mesh__fsdp": 3}, "does not divide"),
        ({"mesh__data": 3}, r"data.global_batch_size=8 is not divisible by the 3"),
        ({"mesh__data": -1, "mesh__tensor": -1}, "Only one mesh axis may be -1"),
        ({"mesh__fsdp": 0}, r"mesh.fsdp=0 is invalid"),
        (
            {"data__global_batch_size": 12},
            r"data.global_batch_size=12 is not divisible",
        ),
        (
            {"model__position_encoding": "rotary"},
            r"valid names are \[.*'rope'.*\]",
        ),
        (
            {"model__position_encoding": "learned", "data__seq_len": 600},
            r"data.seq_len=600 exceeds model.max_position_embeddings=512",
        ),
        ({"model__num_heads": 3}, "not divisible by model.num_heads=3"),
        ({"model__rotary_dim": 15}, "model.rotary_dim=15 is invalid"),
        ({"train__num_train_steps": 0}, "train.num_train_steps=0 is invalid"),
        ({"optim__decay": "step"}, "optim.decay='step' is invalid"),
    ],
)
def test_invalid_config_rejected(tfds_dir, overrides, message):
    config = smoke_config(tfds_dir, **overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, device_count=8)


def test_invalid_config_fails_before_work(tfds_dir, tmp_path):
    config = smoke_config(tfds_dir, mesh__data=16)
    with pytest.raises(ConfigError):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_mismatched_checkpoint_rejected(tfds_dir, tmp_path):
    train_and_evaluate(smoke_config(tfds_dir), str(tmp_path))
    wider = smoke_config(tfds_dir, model__hidden_size=64, train__num_train_steps=6)
    expected = r"shape of params/transformer/embeddings/token/embedding: checkpoint \(\d+, 32\), model \(\d+, 64\)"
    with pytest.raises(ValueError, match=expected):
        train_and_evaluate(wider, str(tmp_path))
    deeper = smoke_config(tfds_dir, model__num_layers=3, train__num_train_steps=6)
    with pytest.raises(
        ValueError, match="missing from checkpoint: params/transformer/layer_2/"
    ):
        train_and_evaluate(deeper, str(tmp_path))


def test_checkpointer_keeps_last(tmp_path):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
    state = {"w": np.arange(3.0)}
    for step in (1, 2, 3):
        checkpointer.save(step, state, {"next_step": step})
    checkpointer.wait()
    assert checkpointer.latest_step() == 3
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]
    checkpointer.close()


def run_command_line(workdir, *overrides: str) -> subprocess.CompletedProcess:
    """Run `python -m roformer_jax.main` on the smoke config from the repo root."""
    command = [
        sys.executable,
        "-m",
        "roformer_jax.main",
        "--config=configs/tiny_shakespeare.py:smoke",
        f"--workdir={workdir}",
        *overrides,
    ]
    root = pathlib.Path(__file__).resolve().parents[1]
    return subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=300
    )


def test_command_line_overrides(tfds_dir, tmp_path):
    """The documented command trains, with --config.a.b overrides applied."""
    result = run_command_line(
        tmp_path,
        f"--config.data.manual_dir={SHARED_COPY}",
        f"--config.data.data_dir={tfds_dir}",
        "--config.train.num_train_steps=3",
        "--config.train.tensorboard=False",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3/3" in result.stderr
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["train"]["num_train_steps"] == 3
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert [row["step"] for row in rows if "train/loss" in row] == [2, 3]


def test_command_line_rejects_unknown_field(tmp_path):
    result = run_command_line(tmp_path, "--config.train.num_steps=3")
    assert result.returncode != 0
    assert "num_steps" in result.stderr


def test_command_line_prints_config_error(tmp_path):
    """A user error ends the command with its message and no traceback."""
    result = run_command_line(tmp_path, "--config.model.position_encoding=rotary")
    assert result.returncode == 1
    assert "ConfigError: model.position_encoding='rotary' is unknown" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_lists_every_model_field():
    """Every model option appears, with its default, in the config file."""
    import dataclasses

    from roformer_jax.model_config import ModelConfig

    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    config = tiny_shakespeare.get_config()
    assert fields - set(config.model) == {"vocab_size"}
    defaults = ModelConfig(vocab_size=1)
    assert config.model.rope_scaling == defaults.rope_scaling


def test_command_line_runs_outside_the_repository(tmp_path):
    """A config that imports its siblings (`from configs import ...`) loads
    when the command runs from another directory."""
    root = pathlib.Path(__file__).resolve().parents[1]
    cail = root / ".." / "shared" / "data" / "cail2019_scm" / "input.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "roformer_jax.main",
            f"--config={root / 'configs' / 'mlm_pretrain.py'}:corpus=cail2019_scm,smoke",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.corpus_path={cail}",
            "--config.train.num_train_steps=1",
            "--config.optim.warmup_steps=0",
            "--config.train.tensorboard=False",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 1/1" in result.stderr
