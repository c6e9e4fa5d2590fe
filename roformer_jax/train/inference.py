"""Load a trained language model from its workdir for inference.

A workdir contains what the trainer wrote: `config.json`, `checkpoints/`, and
the run's vocabulary (`vocab.json` for a character corpus, `tokenizer/`
for subword tasks; byte-level corpora need none). A Hugging Face RoFormer
directory (masked or causal LM, with its `vocab.txt`) loads the same way
through `load_huggingface_model`.
"""

import dataclasses
import json
import os

import ml_collections

from roformer_jax.data.tokenizers import Tokenizer
from roformer_jax.data.vocab import UNK_ID, ByteVocab, CharVocab
from roformer_jax.generate import TextCodec
from roformer_jax.interop import load_huggingface
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.train import checkpoint
from roformer_jax.train.inputs import VOCAB_FILENAME
from roformer_jax.train.text_inputs import TOKENIZER_DIRNAME

LANGUAGE_MODEL_TASKS = ("causal_lm", "masked_lm")


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """A language model, its parameters and its text codec."""

    model: LanguageModel
    params: dict
    codec: TextCodec
    task: str  # causal_lm or masked_lm
    step: int | None  # The checkpoint's step; None for imported weights.
    # The longest sequence it was trained on (data.seq_len), or for imported
    # weights max_position_embeddings; None when unknown.
    trained_length: int | None = None


def codec_from_tokenizer(tokenizer: Tokenizer) -> TextCodec:
    return TextCodec(
        encode=tokenizer.encode,
        decode=tokenizer.decode,
        pad_id=tokenizer.pad_id,
        unk_id=tokenizer.unk_id,
        mask_id=tokenizer.mask_id,
        prefix_ids=(tokenizer.cls_id,),
        suffix_ids=(tokenizer.sep_id,),
        special_ids=tokenizer.special_ids,
    )


def _codec(config, workdir: str) -> tuple[TextCodec, int]:
    tokenizer_dir = os.path.join(workdir, TOKENIZER_DIRNAME)
    if os.path.isdir(tokenizer_dir):
        tokenizer = Tokenizer.load(tokenizer_dir)
        return codec_from_tokenizer(tokenizer), tokenizer.vocab_size
    if config.data.get("dataset") == "enwik8":
        vocab = ByteVocab()
        return TextCodec(encode=vocab.encode, decode=vocab.decode), vocab.size
    path = os.path.join(workdir, VOCAB_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir!r} has neither {TOKENIZER_DIRNAME}/ nor {VOCAB_FILENAME}, "
            "so its text cannot be encoded; point --workdir at a training run's "
            "directory."
        )
    vocab = CharVocab.load(path)
    return (
        TextCodec(
            encode=vocab.encode,
            decode=vocab.decode,
            pad_id=UNK_ID,
            unk_id=UNK_ID,
            special_ids=frozenset({UNK_ID}),
        ),
        vocab.size,
    )


def load_workdir(workdir: str) -> InferenceModel:
    """Build the model of `workdir`'s config with its latest parameters.

    Raises:
      FileNotFoundError: `workdir` has no config.json or no vocabulary.
      ValueError: the run's task is not a language model, or it has no
        checkpoint (`checkpoint.MissingCheckpointError`).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; point --workdir at the directory a "
            "training run wrote (it holds config.json and checkpoints/)."
        )
    with open(path, encoding="utf-8") as file:
        config = ml_collections.ConfigDict(json.load(file))
    task = config.get("task", "causal_lm")
    if task not in LANGUAGE_MODEL_TASKS:
        raise ValueError(
            f"{workdir!r} trained task={task!r}; sampling and fill-mask need a "
            f"language model, one of {list(LANGUAGE_MODEL_TASKS)}."
        )
    codec, vocab_size = _codec(config, workdir)
    model_config = ModelConfig.from_config(
        config.model, vocab_size=vocab_size, dropout_rate=0.0
    )
    restored = checkpoint.restore_params(workdir)
    return InferenceModel(
        model=LanguageModel(model_config),
        params=restored.params,
        codec=codec,
        task=task,
        step=restored.step,
        trained_length=config.data.get("seq_len"),
    )


def load_huggingface_model(directory: str) -> InferenceModel:
    """Load a Hugging Face `RoFormerForMaskedLM` or `RoFormerForCausalLM`
    directory and its tokenizer (`vocab.txt`, `tokenizer_config.json`).

    Raises:
      ValueError: the checkpoint is not a language model, or a file is
        missing or invalid (the interop and tokenizer errors name it).
    """
    imported = load_huggingface(directory)
    if imported.head not in ("masked_lm", "causal_lm"):
        raise ValueError(
            f"{directory!r} contains a model with the {imported.head!r} head; sampling "
            "and fill-mask need RoFormerForMaskedLM or RoFormerForCausalLM (in "
            "Python, roformer_jax.interop.load_huggingface reads any head)."
        )
    tokenizer = Tokenizer.from_huggingface(directory)
    model_config = dataclasses.replace(imported.model_config, dropout_rate=0.0)
    return InferenceModel(
        model=LanguageModel(model_config),
        params=imported.params,
        codec=codec_from_tokenizer(tokenizer),
        task=imported.head,
        step=None,
        trained_length=model_config.max_position_embeddings,
    )
