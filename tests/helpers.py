"""Paths and a tiny training config shared by the trainer tests."""

import pathlib

from configs import tiny_shakespeare
from roformer_jax.train import metrics as metrics_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_COPY = ROOT / ".." / "shared" / "data" / "tiny_shakespeare"


def smoke_config(tfds_dir: str, **overrides):
    """The `smoke` Tiny Shakespeare config on the offline copy of the text.

    Each override is `group__name=value`, e.g. `train__num_train_steps=6`.
    """
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.data.data_dir = tfds_dir
        config.data.manual_dir = str(SHARED_COPY)
        config.train.tensorboard = False
        for dotted, value in overrides.items():
            group, name = dotted.split("__")
            config[group][name] = value
    return config


def train_losses(workdir) -> list[float]:
    return [
        row["train/loss"]
        for row in metrics_lib.read_metrics(str(workdir))
        if "train/loss" in row
    ]
