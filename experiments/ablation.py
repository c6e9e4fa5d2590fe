"""Run a position-encoding ablation grid and write its tables and plots.

  python -m experiments.ablation --config=configs/ablation_tiny_shakespeare.py \
      --root=runs/ablation [--shard=0/1] [--config.data.manual_dir=DIR]

Each (encoding, size, seed) trains through the package's trainer in its own
workdir under --root, so a rerun skips finished runs (those with
`result.json`) and resumes interrupted ones from their checkpoints. With
`--shard=K/N`, this process takes every N-th run starting at K, so N
processes or hosts share a grid; the report covers every finished run.
"""

import dataclasses
import json
import logging
import math
import os
import statistics

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import ablation_report
from roformer_jax import positions
from roformer_jax.train import length_eval
from roformer_jax.train.metrics import read_metrics
from roformer_jax.train.state import parameter_count
from roformer_jax.train.trainer import setup, train_loop
from roformer_jax.train.validation import validate_config

TRAINER_GROUPS = ("seed", "task", "model", "data", "optim", "train", "mesh")
RESULT_FILENAME = "result.json"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    encoding: str
    size: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.encoding}-{self.size}-seed{self.seed}"


def encoding_overrides(config, label: str) -> dict:
    """Model overrides of a grid label: its `grid.encoding_overrides` entry,
    or just `position_encoding=label` for a label without one."""
    if label in config.grid.encoding_overrides:
        return dict(config.grid.encoding_overrides[label])
    return {"position_encoding": label}


def grid(config) -> list[RunSpec]:
    unknown = sorted(
        label
        for label in config.grid.position_encodings
        if encoding_overrides(config, label).get("position_encoding")
        not in positions.registered_names()
    )
    if unknown:
        raise ValueError(
            f"grid.position_encodings has unknown names {unknown}; use registered "
            f"encodings {positions.registered_names()} or labels defined in "
            "grid.encoding_overrides."
        )
    return [
        RunSpec(encoding, size, seed)
        for size in config.grid.sizes
        for encoding in config.grid.position_encodings
        for seed in config.grid.seeds
    ]


def parse_shard(shard: str) -> tuple[int, int]:
    index, _, count = shard.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"--shard={shard!r} is invalid; use K/N with 0 <= K < N, e.g. 0/1."
        )
    return index, count


def run_config(config, spec: RunSpec) -> ml_collections.ConfigDict:
    """Build the trainer config of one run: the grid's base with this cell applied."""
    if spec.size not in config.grid.size_overrides:
        raise ValueError(
            f"grid.sizes names {spec.size!r}, which grid.size_overrides lacks; "
            f"define it there or use one of {sorted(config.grid.size_overrides)}."
        )
    full = config.copy_and_resolve_references()  # Edits below stay local.
    result = ml_collections.ConfigDict({group: full[group] for group in TRAINER_GROUPS})
    result.seed = spec.seed
    result.model.update(encoding_overrides(config, spec.encoding))
    result.model.update(config.grid.size_overrides[spec.size])
    result.lock()
    return result


def _eval_steps_losses(workdir: str) -> dict[str, float]:
    return {
        str(row["step"]): row["eval/loss"]
        for row in read_metrics(workdir)
        if "eval/loss" in row
    }


def _median_throughput(workdir: str) -> float:
    rates = [
        row["perf/tokens_per_second"]
        for row in read_metrics(workdir)
        if "perf/tokens_per_second" in row
    ]
    return statistics.median(rates) if rates else math.nan


def _evaluation_points(run, config, label: str) -> list[tuple[str, int, object]]:
    """(key, length, model config) of every evaluation: the trained model at
    each length multiplier and, for grid labels in
    `extrapolation.rescaled_labels`, each RoPE rescaling at each of the
    rescaled multipliers, with the scale factor equal to the multiplier."""
    extrapolation = config.extrapolation
    train_len = config.data.seq_len
    model_config = run.model.config
    points = [
        (f"plain@{m}x", m * train_len, model_config)
        for m in extrapolation.length_multipliers
    ]
    if label in extrapolation.rescaled_labels:
        for rescaling in extrapolation.rope_rescalings:
            for m in extrapolation.rescaled_length_multipliers:
                rescaled = dataclasses.replace(
                    model_config,
                    rope_scaling=rescaling,
                    rope_scaling_factor=float(m),
                    rope_original_max_length=train_len,
                )
                points.append((f"{rescaling}@{m}x", m * train_len, rescaled))
    return points


def _evaluate_point(run, config, length: int, model_config) -> dict:
    extrapolation = config.extrapolation
    model = type(run.model)(model_config)
    tokens = run.data.char_data.validation_tokens[: extrapolation.max_eval_tokens]
    loss = length_eval.loss_by_position(
        model,
        run.state.params,
        tokens,
        seq_len=length,
        batch_size=extrapolation.eval_batch_size,
    )
    passkey = None
    digits = extrapolation.passkey_digits
    if length >= length_eval.passkey_min_length(run.data.char_data.vocab, digits):
        prompts = length_eval.passkey_prompts(
            run.data.char_data.vocab,
            run.data.char_data.vocab.decode(run.data.char_data.validation_tokens),
            length=length,
            num_trials=extrapolation.passkey_trials,
            seed=0,
            digits=digits,
        )
        passkey = length_eval.passkey_accuracy(model, run.state.params, prompts)
    return {
        "length": length,
        "loss": loss.mean_loss,
        "position_loss": loss.position_loss.tolist(),
        "passkey_accuracy": passkey,
    }


def _evaluate_lengths(run, config, label: str) -> dict:
    """Loss per length (and per position), plus passkey accuracy; None where
    the encoding cannot represent the length."""
    model_config = run.model.config
    encoding = positions.get(model_config.position_encoding)(model_config)
    max_length = encoding.max_length()
    results = {}
    for key, length, point_config in _evaluation_points(run, config, label):
        if max_length is not None and length > max_length:
            results[key] = None
        else:
            results[key] = _evaluate_point(run, config, length, point_config)
    return results


def run_one(config, spec: RunSpec, root: str) -> dict:
    """Train (or resume) one cell, evaluate it and store `result.json`."""
    workdir = os.path.join(root, spec.name)
    result_path = os.path.join(workdir, RESULT_FILENAME)
    if os.path.exists(result_path):
        logger.info("Skipping %s: %s exists.", spec.name, result_path)
        with open(result_path, encoding="utf-8") as file:
            return json.load(file)
    train_config = run_config(config, spec)
    run = setup(train_config, workdir)
    try:
        final = train_loop(run)
        if not final:
            final = {
                "eval/loss": _eval_steps_losses(workdir)[
                    str(train_config.train.num_train_steps)
                ]
            }
        result = {
            **dataclasses.asdict(spec),
            "parameters": parameter_count(run.state.params),
            "final_eval_loss": final["eval/loss"],
            "eval_loss_by_step": _eval_steps_losses(workdir),
            "tokens_per_second": _median_throughput(workdir),
            "extrapolation": _evaluate_lengths(run, config, spec.encoding),
        }
    finally:
        run.checkpointer.close()
        run.writer.close()
    with open(result_path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(result, file)
    os.replace(result_path + ".tmp", result_path)
    return result


def run_grid(config, root: str, shard: str = "0/1") -> list[dict]:
    """Run this process's share of the grid, then report every finished run."""
    index, count = parse_shard(shard)
    specs = grid(config)
    mine = specs[index::count]
    # Check the grid and every cell before the first run, so a bad cell
    # fails now rather than when its turn comes.
    validate_config(config, device_count=jax.device_count())
    for spec in mine:
        validate_config(run_config(config, spec), device_count=jax.device_count())
    for number, spec in enumerate(mine, start=1):
        logger.info("Run %d/%d of this shard: %s", number, len(mine), spec.name)
        run_one(config, spec, root)
    finished = []
    for spec in specs:
        path = os.path.join(root, spec.name, RESULT_FILENAME)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                finished.append(json.load(file))
    ablation_report.write_report(finished, root)
    return finished


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Ablation config file.", lock_config=True
)
flags.DEFINE_string("root", None, "Directory for the runs and the report.")
flags.DEFINE_string("shard", "0/1", "K/N: run every N-th cell starting at K.")
flags.mark_flags_as_required(["config", "root"])


def _main(argv) -> None:
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: record.name != "absl" or record.levelno >= logging.WARNING
        )
    run_grid(FLAGS.config, FLAGS.root, FLAGS.shard)


if __name__ == "__main__":
    app.run(_main)
