"""Train a model from an experiment config.

  python -m roformer_jax.main --config=configs/tiny_shakespeare.py --workdir=DIR \
      [--config.train.num_train_steps=5000 ...]

Running the same command again resumes from the latest checkpoint in DIR.

For multi-process training, run the same command once per process. Under
Slurm, Open MPI, Cloud TPU or Kubernetes the processes find each other on
their own; elsewhere give each one --coordinator_address=HOST:PORT (of
process 0), --num_processes=P and --process_id=0..P-1.
"""

import logging
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from roformer_jax.data.corpora import CorpusError
from roformer_jax.data.text_classification import DataFileError
from roformer_jax.data.tiny_shakespeare import DatasetUnavailableError
from roformer_jax.data.tokenizers import TokenizerError
from roformer_jax.train import distributed
from roformer_jax.train.checkpoint import CheckpointMismatchError
from roformer_jax.train.faults import NonFiniteError
from roformer_jax.train.pretrained import PretrainedMismatchError
from roformer_jax.train.text_inputs import DataConfigError
from roformer_jax.train.trainer import train_and_evaluate
from roformer_jax.train.validation import ConfigError

# Errors in what the user supplied; their messages name the value and the fix,
# so the command prints the message alone, without a traceback.
USER_INPUT_ERRORS = (
    ConfigError,
    distributed.DistributedConfigError,
    distributed.FirstProcessError,
    DatasetUnavailableError,
    CheckpointMismatchError,
    CorpusError,
    DataConfigError,
    DataFileError,
    NonFiniteError,
    PretrainedMismatchError,
    TokenizerError,
)

FLAGS = flags.FLAGS


def _make_configs_importable(argv: list[str]) -> None:
    """Let config files import their siblings (`from configs import ...`)
    from any working directory, by putting the folder that contains their
    `configs/` package on the import path."""
    for argument in argv:
        if argument.startswith("--config="):
            path = pathlib.Path(argument.removeprefix("--config=").split(":")[0])
            folder = path.resolve().parent
            if folder.name == "configs" and (folder / "__init__.py").exists():
                sys.path.insert(0, str(folder.parent))


_make_configs_importable(sys.argv)
config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, optionally with ':variant'.",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and the tokenizer."
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0, where jax.distributed starts its coordinator. "
    "Give it with --num_processes and --process_id, or leave all three unset "
    "for a single process or a cluster launcher that JAX detects.",
)
flags.DEFINE_integer(
    "num_processes", None, "Number of processes in a multi-process run."
)
flags.DEFINE_integer(
    "process_id", None, "Index of this process, 0 to --num_processes - 1."
)
flags.mark_flags_as_required(["config", "workdir"])


def _drop_absl_info(record: logging.LogRecord) -> bool:
    return record.name != "absl" or record.levelno >= logging.WARNING


def _main(argv) -> None:
    del argv
    # TensorFlow, which TFDS imports, prints C++ INFO lines unless this is set.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Orbax logs every checkpoint-manager detail through absl at INFO, and
    # TensorFlow resets the absl logger's level on import, so filter at the
    # handler instead.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_absl_info)
    # JAX reports at INFO each accelerator backend it did not find.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        distributed.initialize(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        distributed.quiet_other_processes()
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except USER_INPUT_ERRORS as error:
        logging.error("%s: %s", type(error).__name__, error)
        raise SystemExit(1) from None


def run() -> None:
    """Console-script entry point (`roformer-train`)."""
    app.run(_main)


if __name__ == "__main__":
    run()
