"""RoFormer models built from the blocks in `layers`."""

from roformer_jax.models.roformer import LanguageModel, LMHead, Transformer

__all__ = ["LanguageModel", "LMHead", "Transformer"]
