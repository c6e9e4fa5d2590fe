"""The data phase of the trainer: the task, its batch sources and vocabulary.

Each batch source builds only this process's shard of every global batch
(`distributed.BatchShard`). Files in the workdir are written by process 0
alone; the other processes wait for it.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

from roformer_jax.data import enwik8, tiny_shakespeare
from roformer_jax.data.vocab import ByteVocab, CharVocab
from roformer_jax.data.windows import RandomWindows, eval_batches
from roformer_jax.train import distributed, tasks, text_inputs
from roformer_jax.train.distributed import WHOLE_BATCH, BatchShard

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "vocab.json"
DATASETS = ("tiny_shakespeare", "enwik8")


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What the trainer needs from the data phase of any task.

    `train.batch(step)` gives this process's rows of the batch of a step;
    `eval_batches()` yields its rows of the whole evaluation split in
    fixed-shape batches. `char_data` is the character corpus of `causal_lm`
    runs and `tokenizer` the subword tokenizer of the text tasks; each is
    None for the other tasks.
    """

    task: object
    train: object
    eval_batches: Callable[[], Iterator[dict]]
    vocab_size: int
    char_data: "LanguageModelData | None" = None
    tokenizer: object = None


@dataclasses.dataclass(frozen=True)
class LanguageModelData:
    """Encoded splits of a character-level corpus and its vocabulary."""

    vocab: CharVocab | ByteVocab
    train: RandomWindows
    validation_tokens: np.ndarray


def _load_or_store_vocab(workdir: str, train_text: str) -> CharVocab:
    """Reuse the vocabulary stored with the run, or store a new one.

    A resumed run must map characters to the same ids as the run it
    continues, so the stored file wins over the one built from the data.
    """
    path = os.path.join(workdir, VOCAB_FILENAME)
    built = CharVocab.from_text(train_text)
    if os.path.exists(path):
        stored = CharVocab.load(path)
        if stored != built:
            raise ValueError(
                f"The vocabulary stored in {path} differs from the one built "
                "from this dataset's training split, so this workdir belongs to "
                "a run on other data; use a new --workdir."
            )
        return stored
    os.makedirs(workdir, exist_ok=True)
    built.save(path)
    return built


def _shared_vocab(workdir: str, train_text: str) -> CharVocab:
    """Return the vocabulary of `_load_or_store_vocab`. Process 0 alone reads
    and writes the file, and the other processes build the same vocabulary."""
    stored = distributed.run_on_first_process(
        lambda: _load_or_store_vocab(workdir, train_text),
        f"check or store {os.path.join(workdir, VOCAB_FILENAME)}",
    )
    return stored if stored is not None else CharVocab.from_text(train_text)


def load_language_model_data(
    config, workdir: str, shard: BatchShard = WHOLE_BATCH
) -> LanguageModelData:
    """Load `config.data.dataset` and build the training batch source."""
    data = config.data
    if data.dataset not in DATASETS:
        raise ValueError(
            f"data.dataset={data.dataset!r} is unknown; valid names are {list(DATASETS)}."
        )
    # TFDS prepares a dataset on first use; process 0 does it, so processes
    # sharing data.data_dir do not write the same files at once.
    if data.dataset == "enwik8":
        byte_splits = distributed.run_first_process_first(
            lambda: enwik8.load_byte_splits(
                data_dir=data.data_dir,
                manual_dir=data.manual_dir,
                source_file=data.get("source_file"),
            ),
            "load enwik8",
        )
        vocab = ByteVocab()
        tokens = {name: split.astype(np.int32) for name, split in byte_splits.items()}
    else:
        splits = distributed.run_first_process_first(
            lambda: tiny_shakespeare.load_text_splits(
                data_dir=data.data_dir, manual_dir=data.manual_dir
            ),
            "load tiny_shakespeare",
        )
        vocab = _shared_vocab(workdir, splits["train"])
        tokens = {name: vocab.encode(text) for name, text in splits.items()}
    logger.info(
        "Loaded %s: %s tokens; vocabulary of %d.",
        data.dataset,
        {name: len(split) for name, split in tokens.items()},
        vocab.size,
    )
    train = RandomWindows(
        tokens["train"],
        seq_len=data.seq_len,
        batch_size=data.global_batch_size,
        seed=config.seed,
        num_shards=shard.count,
        shard_index=shard.index,
    )
    return LanguageModelData(
        vocab=vocab, train=train, validation_tokens=tokens["validation"]
    )


def load_task_data(config, workdir: str, shard: BatchShard = WHOLE_BATCH) -> TaskData:
    """Load the data of `config.task` and build its task description.

    The batch sources give the rows of `shard` (default: every row).

    Raises:
      ConfigError: a batch size of `config.data` does not split into
        `shard.count` shards.
    """
    data = config.data
    distributed.check_batch_sizes(config, shard)
    if config.task == "causal_lm":
        char_data = load_language_model_data(config, workdir, shard)
        return TaskData(
            task=tasks.LanguageModelTask(
                "causal_lm", unit="byte" if data.dataset == "enwik8" else "character"
            ),
            train=char_data.train,
            eval_batches=lambda: eval_batches(
                char_data.validation_tokens,
                seq_len=data.seq_len,
                batch_size=data.eval_batch_size,
                num_shards=shard.count,
                shard_index=shard.index,
            ),
            vocab_size=char_data.vocab.size,
            char_data=char_data,
        )
    if config.task == "masked_lm":
        tokenizer, train, eval_source = text_inputs.load_masked_lm_data(
            config, workdir, shard
        )
        return TaskData(
            task=tasks.LanguageModelTask("masked_lm"),
            train=train,
            eval_batches=eval_source,
            vocab_size=tokenizer.vocab_size,
            tokenizer=tokenizer,
        )
    tokenizer, train, eval_source, description = text_inputs.load_classification_data(
        config, workdir, shard
    )
    task = tasks.ClassificationTask(
        num_classes=description["num_classes"],
        metric_names=description["metric_names"],
        multiple_choice=description["multiple_choice"],
    )
    return TaskData(
        task=task,
        train=train,
        eval_batches=eval_source,
        vocab_size=tokenizer.vocab_size,
        tokenizer=tokenizer,
    )
