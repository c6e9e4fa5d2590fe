"""The data phase of the text tasks: tokenizer, masked-LM corpora, and
classification, regression and matching datasets.

The tokenizer is stored in `WORKDIR/tokenizer/`. A resumed run reloads it;
a fine-tuning run copies it from the pre-training run it starts from, so
token ids mean the same thing in both. In a multi-process run, process 0
builds and stores the tokenizer and the other processes load its copy, so
the workdir must be on storage that every process reads.
"""

import logging
import os

import numpy as np

from roformer_jax.data import corpora, glue, mlm, text_classification
from roformer_jax.data.sequence_batches import (
    EncodedExamples,
    ShuffledBatches,
    encode_pair,
    ordered_batches,
    pad_encoded,
)
from roformer_jax.data.tokenizers import Tokenizer, TokenizerSpec, train_wordpiece
from roformer_jax.train import distributed
from roformer_jax.train.distributed import WHOLE_BATCH, BatchShard

logger = logging.getLogger(__name__)

TOKENIZER_DIRNAME = "tokenizer"
MASKED_LM_DATASETS = ("wikipedia", "cail2019_scm")
CLASSIFICATION_DATASETS = tuple(f"glue/{name}" for name in glue.GLUE_TASKS) + (
    "cail2019_scm",
    "text_file",
)


class DataConfigError(ValueError):
    """A `data.*` or `tokenizer.*` value does not fit the data; the message
    names the field and the fix."""


def _require_path(config, field: str) -> str:
    path = config.data.get(field)
    if not path:
        raise DataConfigError(
            f"data.{field} is not set; pass --config.data.{field}=PATH to the "
            f"{config.data.dataset!r} file."
        )
    if not os.path.exists(path):
        raise DataConfigError(f"data.{field}={path!r} does not exist; check the path.")
    return path


# Tokenizer.


def _spec(config) -> TokenizerSpec:
    return TokenizerSpec(
        kind=config.tokenizer.kind, lowercase=config.tokenizer.lowercase
    )


def load_or_build_tokenizer(config, workdir: str, training_texts) -> Tokenizer:
    """Reuse the workdir's tokenizer, else take the pre-trained run's, a
    `tokenizer.vocab_file`, or train a WordPiece vocabulary on the texts.

    `training_texts` is a callable returning the texts, so they are only
    read when a vocabulary has to be trained. Process 0 chooses and stores
    the tokenizer; the other processes then load the stored copy.
    """
    stored_dir = os.path.join(workdir, TOKENIZER_DIRNAME)
    tokenizer = distributed.run_on_first_process(
        lambda: _choose_and_store_tokenizer(config, workdir, training_texts),
        f"prepare the tokenizer in {stored_dir}",
    )
    if tokenizer is None:
        tokenizer = Tokenizer.load(stored_dir)
    return tokenizer


def _choose_and_store_tokenizer(config, workdir: str, training_texts) -> Tokenizer:
    stored_dir = os.path.join(workdir, TOKENIZER_DIRNAME)
    init_workdir = config.get("finetune", {}).get("init_workdir")
    init_hf_dir = config.get("finetune", {}).get("init_hf_dir")
    if os.path.exists(os.path.join(stored_dir, "vocab.txt")):
        tokenizer = Tokenizer.load(stored_dir)
        logger.info("Reloaded the tokenizer stored in %s.", stored_dir)
    elif init_hf_dir:
        tokenizer = Tokenizer.from_huggingface(init_hf_dir)
        logger.info("Using the tokenizer of %s.", init_hf_dir)
    elif init_workdir:
        source = os.path.join(init_workdir, TOKENIZER_DIRNAME)
        if not os.path.exists(os.path.join(source, "vocab.txt")):
            raise DataConfigError(
                f"finetune.init_workdir={init_workdir!r} has no {TOKENIZER_DIRNAME}/"
                "vocab.txt; point it at the workdir of a masked-LM pre-training "
                "run of roformer_jax."
            )
        tokenizer = Tokenizer.load(source)
        logger.info("Using the pre-trained run's tokenizer from %s.", source)
    elif config.tokenizer.vocab_file:
        tokenizer = Tokenizer.from_vocab_file(
            config.tokenizer.vocab_file, _spec(config)
        )
        logger.info("Loaded vocabulary %s.", config.tokenizer.vocab_file)
    else:
        logger.info(
            "Training a %s vocabulary of %d tokens.",
            config.tokenizer.kind,
            config.tokenizer.vocab_size,
        )
        tokenizer = train_wordpiece(
            training_texts(),
            vocab_size=config.tokenizer.vocab_size,
            spec=_spec(config),
            min_frequency=config.tokenizer.min_frequency,
        )
    if init_workdir and os.path.exists(os.path.join(stored_dir, "vocab.txt")):
        pretrained = Tokenizer.load(os.path.join(init_workdir, TOKENIZER_DIRNAME))
        if pretrained != tokenizer:
            raise DataConfigError(
                f"The tokenizer stored in {stored_dir} differs from the one of "
                f"finetune.init_workdir={init_workdir!r}, so this workdir belongs "
                "to another run; use a new --workdir."
            )
    tokenizer.save(stored_dir)
    logger.info("Tokenizer: %s, %d tokens.", tokenizer.spec.kind, tokenizer.vocab_size)
    return tokenizer


# Masked language modelling.


class GatheredPredictions:
    """Wraps a masked-LM batch source so each row predicts only its P masked
    positions: `targets` and `weights` become `[B, P]` and the batch gains
    `prediction_positions` `[B, P]`. Rows with more than P masked tokens keep
    the first P; `max_predictions` is sized so that this is rare."""

    def __init__(self, source, max_predictions: int):
        self.source = source
        self.max_predictions = max_predictions

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return gather_predictions(self.source.batch(step), self.max_predictions)


def gather_predictions(batch: dict, max_predictions: int) -> dict[str, np.ndarray]:
    weights = batch["weights"]
    rows = weights.shape[0]
    positions = np.zeros((rows, max_predictions), dtype=np.int32)
    gathered_weights = np.zeros((rows, max_predictions), dtype=np.float32)
    for row in range(rows):
        chosen = np.flatnonzero(weights[row] > 0)[:max_predictions]
        positions[row, : len(chosen)] = chosen
        gathered_weights[row, : len(chosen)] = 1.0
    result = dict(batch)
    result["targets"] = np.take_along_axis(batch["targets"], positions, axis=1)
    result["weights"] = gathered_weights
    result["prediction_positions"] = positions
    return result


def max_predictions(seq_len: int, mask_rate: float) -> int:
    """Room for the masked tokens of a full row, with a margin for whole
    words that overshoot the target count."""
    return min(seq_len, int(np.ceil(seq_len * mask_rate * 1.25)) + 2)


def _read_corpus(config) -> list[str]:
    data = config.data
    path = _require_path(config, "corpus_path")
    if data.dataset == "wikipedia":
        return corpora.read_wikipedia_documents(path)
    return corpora.read_cail_documents(path)


def _encode_documents(tokenizer: Tokenizer, documents, whole_word: bool):
    ids, starts = [], []
    for document in documents:
        if whole_word:
            document_ids, document_starts = tokenizer.encode_words(document)
            starts.append(np.asarray(document_starts, dtype=bool))
        else:
            document_ids = tokenizer.encode(document)
        ids.append(np.asarray(document_ids, dtype=np.int32))
    return ids, (starts if whole_word else None)


def load_masked_lm_data(config, workdir: str, shard: BatchShard = WHOLE_BATCH):
    """Read, split, tokenize and pack the corpus, and return the task data
    parts, whose batches contain the rows of `shard`."""
    data = config.data
    if data.dataset not in MASKED_LM_DATASETS:
        raise DataConfigError(
            f"data.dataset={data.dataset!r} is not a masked-LM corpus; use one "
            f"of {list(MASKED_LM_DATASETS)}."
        )
    documents = _read_corpus(config)
    train_docs, validation_docs = corpora.split_documents(
        documents, validation_fraction=data.validation_fraction, seed=config.seed
    )
    tokenizer = load_or_build_tokenizer(config, workdir, lambda: train_docs)
    packed = {}
    for name, docs in (("train", train_docs), ("validation", validation_docs)):
        ids, starts = _encode_documents(tokenizer, docs, data.whole_word_masking)
        packed[name] = mlm.pack_documents(
            ids,
            seq_len=data.seq_len,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            pad_id=tokenizer.pad_id,
            word_starts=starts,
        )
        logger.info(
            "%s %s: %d documents, %d tokens, %d packed rows of %d.",
            data.dataset,
            name,
            len(docs),
            sum(len(row) for row in ids),
            packed[name].tokens.shape[0],
            data.seq_len,
        )
    replacement_ids = np.array(
        [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids],
        dtype=np.int32,
    )
    masking = dict(
        mask_id=tokenizer.mask_id,
        replacement_ids=replacement_ids,
        mask_rate=data.mask_rate,
        whole_word=data.whole_word_masking,
        num_shards=shard.count,
        shard_index=shard.index,
    )
    predictions = max_predictions(data.seq_len, data.mask_rate)
    train = GatheredPredictions(
        mlm.MaskedLMBatches(
            packed["train"],
            batch_size=data.global_batch_size,
            seed=config.seed,
            **masking,
        ),
        predictions,
    )

    def eval_batches():
        for batch in mlm.masked_eval_batches(
            packed["validation"],
            batch_size=data.eval_batch_size,
            seed=config.seed,
            **masking,
        ):
            yield gather_predictions(batch, predictions)

    return tokenizer, train, eval_batches


# Classification, regression and matching.


class _CachedEncoder:
    """Encodes each distinct text once; CAIL reuses every anchor document."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer.encode(text)
        return self._cache[text]


def encode_text_examples(
    tokenizer: Tokenizer, examples, *, seq_len: int, regression: bool
) -> EncodedExamples:
    encode = _CachedEncoder(tokenizer)
    pairs = [
        encode_pair(
            encode(example.text_a),
            None if example.text_b is None else encode(example.text_b),
            seq_len=seq_len,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
        )
        for example in examples
    ]
    tokens, types, lengths = pad_encoded(pairs, seq_len, tokenizer.pad_id)
    labels = np.array(
        [example.label for example in examples],
        dtype=np.float32 if regression else np.int32,
    )
    return EncodedExamples(tokens, types, lengths, labels)


def encode_triplet_examples(
    tokenizer: Tokenizer, examples, *, seq_len: int
) -> EncodedExamples:
    """Encode (anchor, first) and (anchor, second) as the 2 candidates."""
    encode = _CachedEncoder(tokenizer)
    pairs = []
    for example in examples:
        for candidate in (example.first, example.second):
            pairs.append(
                encode_pair(
                    encode(example.anchor),
                    encode(candidate),
                    seq_len=seq_len,
                    cls_id=tokenizer.cls_id,
                    sep_id=tokenizer.sep_id,
                )
            )
    tokens, types, lengths = pad_encoded(pairs, seq_len, tokenizer.pad_id)
    count = len(examples)
    labels = np.array([example.label for example in examples], dtype=np.int32)
    return EncodedExamples(
        tokens.reshape(count, 2, seq_len),
        types.reshape(count, 2, seq_len),
        lengths.reshape(count, 2),
        labels,
    )


def _examples_texts(examples):
    for example in examples:
        if hasattr(example, "anchor"):
            yield from (example.anchor, example.first, example.second)
        else:
            yield example.text_a
            if example.text_b is not None:
                yield example.text_b


def read_classification_examples(config):
    """Return (train examples, validation examples, task description).

    The description is a dict with `num_classes` (0 for regression),
    `metric_names`, `multiple_choice` and `label_names`.
    """
    data = config.data
    dataset = data.dataset
    if dataset.startswith("glue/"):
        name = dataset.removeprefix("glue/")
        if name not in glue.GLUE_TASKS:
            raise DataConfigError(
                f"data.dataset={dataset!r} is not a supported GLUE task; use one "
                f"of {[f'glue/{task}' for task in glue.GLUE_TASKS]}."
            )
        spec = glue.GLUE_TASKS[name]
        splits = [
            glue.load_glue(
                name, split, data_dir=data.data_dir, manual_dir=data.manual_dir
            )
            for split in ("train", "validation")
        ]
        description = dict(
            num_classes=spec.num_classes,
            metric_names=tuple(spec.metrics),
            multiple_choice=False,
            label_names=tuple(spec.label_names),
        )
        return splits[0], splits[1], description
    if dataset == "cail2019_scm":
        triplets = text_classification.read_cail_triplets(
            _require_path(config, "corpus_path"),
            skip_invalid_rows=data.skip_invalid_rows,
        )
        # The split is fixed by data.split_seed, so runs with other seeds
        # evaluate on the same examples.
        labelled = text_classification.cail_examples(triplets, seed=data.split_seed)
        train, validation = text_classification.split_examples(
            labelled, validation_fraction=data.validation_fraction, seed=data.split_seed
        )
        description = dict(
            num_classes=2,
            metric_names=("accuracy",),
            multiple_choice=True,
            label_names=("first closer", "second closer"),
        )
        return train, validation, description
    if dataset == "text_file":
        options = dict(
            file_format=data.file_format,
            text_columns=tuple(data.text_columns),
            label_column=data.label_column,
            regression=data.regression,
            skip_invalid_rows=data.skip_invalid_rows,
        )
        train, label_names = text_classification.read_labelled_file(
            _require_path(config, "corpus_path"),
            label_names=tuple(data.label_names) if data.label_names else None,
            **options,
        )
        validation, _ = text_classification.read_labelled_file(
            _require_path(config, "validation_path"),
            label_names=None if data.regression else label_names,
            **options,
        )
        description = dict(
            num_classes=0 if data.regression else len(label_names),
            metric_names=("pearson", "spearman")
            if data.regression
            else ("accuracy",)
            + (("f1", "matthews_corrcoef") if len(label_names) == 2 else ()),
            multiple_choice=False,
            label_names=tuple(label_names),
        )
        return train, validation, description
    raise DataConfigError(
        f"data.dataset={dataset!r} is not a classification dataset; use one of "
        f"{list(CLASSIFICATION_DATASETS)}."
    )


UNKNOWN_TOKEN_WARNING_FRACTION = 0.05


def _warn_unknown_tokens(tokenizer: Tokenizer, examples: EncodedExamples) -> None:
    """Warn when the tokenizer maps much of the task's text to [UNK], as an
    English vocabulary does with Chinese text."""
    real = examples.tokens[examples.tokens != tokenizer.pad_id]
    fraction = float(np.mean(real == tokenizer.unk_id)) if real.size else 0.0
    if fraction > UNKNOWN_TOKEN_WARNING_FRACTION:
        logger.warning(
            "%.0f%% of the training tokens are [UNK]: the tokenizer does not fit "
            "this text. Pre-train on a corpus in the task's language (for "
            "Chinese, corpus=cail2019_scm) and fine-tune from that run.",
            100 * fraction,
        )


def load_classification_data(config, workdir: str, shard: BatchShard = WHOLE_BATCH):
    """Read, tokenize and batch a classification, regression or matching
    task. The batches contain the rows of `shard`."""
    data = config.data
    # GLUE comes through TFDS, which prepares it on first use; process 0 does
    # that, so processes sharing data.data_dir do not write the same files.
    train_examples, validation_examples, description = (
        distributed.run_first_process_first(
            lambda: read_classification_examples(config), f"read {data.dataset}"
        )
    )
    tokenizer = load_or_build_tokenizer(
        config, workdir, lambda: list(_examples_texts(train_examples))
    )
    if description["multiple_choice"]:
        encoded = [
            encode_triplet_examples(tokenizer, examples, seq_len=data.seq_len)
            for examples in (train_examples, validation_examples)
        ]
    else:
        encoded = [
            encode_text_examples(
                tokenizer,
                examples,
                seq_len=data.seq_len,
                regression=description["num_classes"] == 0,
            )
            for examples in (train_examples, validation_examples)
        ]
    _warn_unknown_tokens(tokenizer, encoded[0])
    truncated = float(np.mean(encoded[0].lengths == data.seq_len))
    logger.info(
        "%s: %d training and %d validation examples; %.1f%% of training "
        "sequences fill data.seq_len=%d (truncated or exact).",
        data.dataset,
        len(encoded[0]),
        len(encoded[1]),
        100 * truncated,
        data.seq_len,
    )
    train = ShuffledBatches(
        encoded[0],
        batch_size=data.global_batch_size,
        seed=config.seed,
        num_shards=shard.count,
        shard_index=shard.index,
    )

    def eval_batches():
        return ordered_batches(
            encoded[1],
            batch_size=data.eval_batch_size,
            num_shards=shard.count,
            shard_index=shard.index,
        )

    return tokenizer, train, eval_batches, description
