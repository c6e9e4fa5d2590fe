"""Task heads over the transformer: sequence classification, regression and
multiple choice.

The classification head follows RoFormer's (and Hugging Face's
`RoFormerClassificationHead`): the first token's hidden state, dropout, a
dense D -> D layer with GELU, dropout, and a dense layer to the outputs. A
regression task is a head with one output.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.dropout import Dropout
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.layers import dense_init
from roformer_jax.models.roformer import Transformer

Array = jax.Array


class ClassificationHead(nn.Module):
    """`[B, T, D]` hidden states -> `[B, num_outputs]` float32 scores."""

    config: ModelConfig
    num_outputs: int

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        config = self.config
        dropout = Dropout(config.dropout_rate)
        x = dropout(x[:, 0, :], deterministic=deterministic)  # The [CLS] token.
        x = nn.Dense(
            config.hidden_size,
            dtype=config.dtype,
            kernel_init=dense_init(config, ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="dense",
        )(x)
        x = nn.gelu(x, approximate=False)
        x = dropout(x, deterministic=deterministic)
        x = nn.Dense(
            self.num_outputs,
            dtype=jnp.float32,
            kernel_init=dense_init(config, ("mlp", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="out_proj",
        )(x)
        return x.astype(jnp.float32)


class SequenceClassifier(nn.Module):
    """A bidirectional transformer and a classification head.

    `num_outputs` is the number of classes, or 1 for regression. Inputs are
    `[B, T]`; the output is `[B, num_outputs]` float32.
    """

    config: ModelConfig
    num_outputs: int

    def setup(self):
        self.transformer = Transformer(self.config, name="transformer")
        self.classifier = ClassificationHead(
            self.config, self.num_outputs, name="classifier"
        )

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        token_types: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        x = self.transformer(
            tokens, positions, segment_ids, token_types, deterministic=deterministic
        )
        return self.classifier(x, deterministic=deterministic)


class MultipleChoice(nn.Module):
    """Scores C candidate sequences per example with one shared head.

    Inputs are `[B, C, T]`, each row an (anchor, candidate) pair; the output
    is `[B, C]` float32, so a softmax over the last axis picks a candidate.
    CAIL2019-SCM triplets (is B or C closer to A?) are the C = 2 case.
    """

    config: ModelConfig

    def setup(self):
        self.transformer = Transformer(self.config, name="transformer")
        self.classifier = ClassificationHead(self.config, 1, name="classifier")

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        token_types: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        if tokens.ndim == 2:
            # `plan_state` initialises with `[B, T]` inputs: one candidate.
            tokens, positions, segment_ids = (
                a[:, None] for a in (tokens, positions, segment_ids)
            )
            if token_types is not None:
                token_types = token_types[:, None]
        batch, choices, length = tokens.shape

        def flatten(array):
            return None if array is None else array.reshape(batch * choices, length)

        x = self.transformer(
            flatten(tokens),
            flatten(positions),
            flatten(segment_ids),
            flatten(token_types),
            deterministic=deterministic,
        )
        scores = self.classifier(x, deterministic=deterministic)  # [B * C, 1]
        return scores.reshape(batch, choices)
