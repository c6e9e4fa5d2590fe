"""The data phase of the trainer: text splits, vocabulary, batch sources."""

import dataclasses
import logging
import os

import numpy as np

from roformer_jax.data import tiny_shakespeare
from roformer_jax.data.vocab import CharVocab
from roformer_jax.data.windows import RandomWindows

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "vocab.json"
DATASETS = ("tiny_shakespeare",)


@dataclasses.dataclass(frozen=True)
class LanguageModelData:
    """Encoded splits of a character-level corpus and its vocabulary."""

    vocab: CharVocab
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
    splits = tiny_shakespeare.load_text_splits(
        data_dir=data.data_dir, manual_dir=data.manual_dir
    )
    vocab = _load_or_store_vocab(workdir, splits["train"])
    logger.info(
        "Loaded %s: %s characters; vocabulary of %d.",
        data.dataset,
        {name: len(text) for name, text in splits.items()},
        vocab.size,
    )
    train = RandomWindows(
        vocab.encode(splits["train"]),
        seq_len=data.seq_len,
        batch_size=data.global_batch_size,
        seed=config.seed,
    )
    return LanguageModelData(
        vocab=vocab, train=train, validation_tokens=vocab.encode(splits["validation"])
    )
