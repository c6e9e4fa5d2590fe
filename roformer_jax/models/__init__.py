"""RoFormer models built from the blocks in `layers`."""

from roformer_jax.models.heads import (
    ClassificationHead,
    MultipleChoice,
    SequenceClassifier,
)
from roformer_jax.models.roformer import LanguageModel, LMHead, Transformer

__all__ = [
    "ClassificationHead",
    "LanguageModel",
    "LMHead",
    "MultipleChoice",
    "SequenceClassifier",
    "Transformer",
]
