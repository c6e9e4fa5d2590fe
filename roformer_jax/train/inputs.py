"""The data phase of the trainer: the task, its batch sources and vocabulary."""

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

from roformer_jax.data import enwik8, tiny_shakespeare
from roformer_jax.data.vocab import ByteVocab, CharVocab
from roformer_jax.data.windows import RandomWindows, eval_batches
from roformer_jax.train import tasks, text_inputs

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "vocab.json"
DATASETS = ("tiny_shakespeare", "enwik8")


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What the trainer needs from the data phase of any task.

    `train.batch(step)` gives the batch of a step; `eval_batches()` yields
    the whole evaluation split in fixed-shape batches. `char_data` is the
    character corpus of `causal_lm` runs and `tokenizer` the subword
    tokenizer of the text tasks; each is None for the other tasks.
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


def load_language_model_data(config, workdir: str) -> LanguageModelData:
    """Load `config.data.dataset` and build the training batch source."""
    data = config.data
    if data.dataset not in DATASETS:
        raise ValueError(
            f"data.dataset={data.dataset!r} is unknown; valid names are {list(DATASETS)}."
        )
    if data.dataset == "enwik8":
        byte_splits = enwik8.load_byte_splits(
            data_dir=data.data_dir,
            manual_dir=data.manual_dir,
            source_file=data.get("source_file"),
        )
        vocab = ByteVocab()
        tokens = {name: split.astype(np.int32) for name, split in byte_splits.items()}
    else:
        splits = tiny_shakespeare.load_text_splits(
            data_dir=data.data_dir, manual_dir=data.manual_dir
        )
        vocab = _load_or_store_vocab(workdir, splits["train"])
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
    )
    return LanguageModelData(
        vocab=vocab, train=train, validation_tokens=tokens["validation"]
    )


def load_task_data(config, workdir: str) -> TaskData:
    """Load the data of `config.task` and build its task description."""
    data = config.data
    if config.task == "causal_lm":
        char_data = load_language_model_data(config, workdir)
        return TaskData(
            task=tasks.LanguageModelTask(
                "causal_lm", unit="byte" if data.dataset == "enwik8" else "character"
            ),
            train=char_data.train,
            eval_batches=lambda: eval_batches(
                char_data.validation_tokens,
                seq_len=data.seq_len,
                batch_size=data.eval_batch_size,
            ),
            vocab_size=char_data.vocab.size,
            char_data=char_data,
        )
    if config.task == "masked_lm":
        tokenizer, train, eval_source = text_inputs.load_masked_lm_data(config, workdir)
        return TaskData(
            task=tasks.LanguageModelTask("masked_lm"),
            train=train,
            eval_batches=eval_source,
            vocab_size=tokenizer.vocab_size,
            tokenizer=tokenizer,
        )
    tokenizer, train, eval_source, description = text_inputs.load_classification_data(
        config, workdir
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
