"""Tests of the ablation runner on a seconds-long grid."""

import csv
import json
import os
import pathlib

import pytest

from configs import ablation_tiny_shakespeare
from experiments import ablation
from roformer_jax.train.trainer import train_and_evaluate

SHARED_COPY = (
    pathlib.Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "tiny_shakespeare"
)


def smoke_grid(tfds_dir, encodings=("alibi", "learned"), seeds=(0,)):
    config = ablation_tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.data.data_dir = tfds_dir
        config.data.manual_dir = str(SHARED_COPY)
        config.grid.position_encodings = tuple(encodings)
        config.grid.seeds = tuple(seeds)
    return config


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def test_grid_writes_tables_and_plots(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir)
    results = ablation.run_grid(config, str(tmp_path))
    assert [r["encoding"] for r in results] == ["alibi", "learned"]
    for name in (
        "ablation.csv",
        "ablation.md",
        "ablation_curves.png",
        "ablation_lengths.png",
        "ablation_positions.png",
    ):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "ablation.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2
    # Learned positions cannot represent 4x the training length of 32 (table of 64).
    learned = next(row for row in rows if row["encoding"] == "learned")
    assert learned["loss@plain@4x"] == ""
    alibi = next(row for row in rows if row["encoding"] == "alibi")
    assert float(alibi["loss@plain@4x"]) > 0
    assert "| alibi | tiny | 1 |" in (tmp_path / "ablation.md").read_text(
        encoding="utf-8"
    )


def test_rerun_skips_finished_runs(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("alibi",))
    ablation.run_grid(config, str(tmp_path))
    result = tmp_path / "alibi-tiny-seed0" / ablation.RESULT_FILENAME
    before = result.stat().st_mtime_ns
    metrics_before = (tmp_path / "alibi-tiny-seed0" / "metrics.jsonl").read_text()
    ablation.run_grid(config, str(tmp_path))
    assert result.stat().st_mtime_ns == before
    assert (
        tmp_path / "alibi-tiny-seed0" / "metrics.jsonl"
    ).read_text() == metrics_before


def test_interrupted_run_resumes(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("alibi",))
    spec = ablation.RunSpec("alibi", "tiny", 0)
    train_and_evaluate(
        ablation.run_config(config, spec),
        str(tmp_path / "resumed" / spec.name),
        stop_after_step=2,
    )
    resumed = ablation.run_grid(config, str(tmp_path / "resumed"))
    straight = ablation.run_grid(config, str(tmp_path / "straight"))
    assert resumed[0]["final_eval_loss"] == straight[0]["final_eval_loss"]


def test_shards_split_the_grid(tfds_dir):
    config = smoke_grid(tfds_dir, encodings=("alibi", "learned", "rope"), seeds=(0, 1))
    specs = ablation.grid(config)
    first, second = specs[0::2], specs[1::2]
    assert len(first) + len(second) == len(specs) == 6
    assert not set(first) & set(second)
    assert ablation.parse_shard("1/2") == (1, 2)


@pytest.mark.parametrize("shard", ["2/2", "x/2", "0/0", "1"])
def test_invalid_shard_rejected(shard):
    with pytest.raises(ValueError, match="--shard"):
        ablation.parse_shard(shard)


def test_unknown_encoding_rejected(tfds_dir):
    config = smoke_grid(tfds_dir, encodings=("alibi", "rotary"))
    with pytest.raises(ValueError, match=r"unknown names \['rotary'\]"):
        ablation.grid(config)


def test_label_overrides_apply(tfds_dir):
    config = smoke_grid(tfds_dir, encodings=("rope_half", "rope_partial"))
    half = ablation.run_config(config, ablation.RunSpec("rope_half", "tiny", 0))
    assert half.model.position_encoding == "rope"
    assert half.model.rotary_layout == "half"
    partial = ablation.run_config(config, ablation.RunSpec("rope_partial", "tiny", 0))
    assert partial.model.rotary_fraction == 0.5
    assert len(ablation.grid(config)) == 2


def test_run_config_applies_cell(tfds_dir):
    config = smoke_grid(tfds_dir)
    run = ablation.run_config(config, ablation.RunSpec("learned", "tiny", 7))
    assert run.seed == 7
    assert run.model.position_encoding == "learned"
    assert run.model.hidden_size == 32
    assert "grid" not in run
    assert config.model.position_encoding == "rope"  # The grid's base is untouched.


def test_result_json_is_complete(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("alibi",))
    ablation.run_grid(config, str(tmp_path))
    result = json.loads(
        (tmp_path / "alibi-tiny-seed0" / ablation.RESULT_FILENAME).read_text()
    )
    assert set(result["extrapolation"]) == {"plain@1x", "plain@2x", "plain@4x"}
    assert len(result["extrapolation"]["plain@2x"]["position_loss"]) == 64
    assert result["parameters"] > 0
    assert os.path.isdir(tmp_path / "alibi-tiny-seed0" / "checkpoints")


def test_rope_rescalings_evaluated(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("rope",))
    result = ablation.run_grid(config, str(tmp_path))[0]
    keys = set(result["extrapolation"])
    assert {"plain@1x", "plain@2x", "plain@4x"} <= keys
    assert {"linear@2x", "linear@8x", "yarn@2x", "yarn@8x"} <= keys
    assert result["extrapolation"]["yarn@8x"]["length"] == 8 * 32
    table = (tmp_path / "ablation.md").read_text(encoding="utf-8")
    assert "| rescaling | 1x | 2x | 4x | 8x |" in table
    assert "| yarn |" in table


def test_rescalings_only_for_listed_labels(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("rope_half",))
    result = ablation.run_grid(config, str(tmp_path))[0]
    assert set(result["extrapolation"]) == {"plain@1x", "plain@2x", "plain@4x"}


def test_bad_cell_fails_before_any_run(tfds_dir, tmp_path):
    config = smoke_grid(tfds_dir, encodings=("alibi", "learned"))
    with config.unlocked():
        # The second cell's size makes the heads indivisible; it must fail
        # before the first cell trains.
        config.grid.sizes = ("tiny", "odd")
        config.grid.size_overrides.odd = dict(config.grid.size_overrides.tiny)
        config.grid.size_overrides.odd["num_heads"] = 7
    root = tmp_path / "grid"

    with pytest.raises(ValueError, match="num_heads"):
        ablation.run_grid(config, str(root))

    assert not root.exists() or not any(root.iterdir())
