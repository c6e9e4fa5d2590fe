"""Input pipeline: the Tiny Shakespeare dataset, character vocabulary, batches.

Import the modules directly (`roformer_jax.data.vocab`, ...). This package
imports none of them, so code that needs only batches does not load
TensorFlow Datasets.
"""
