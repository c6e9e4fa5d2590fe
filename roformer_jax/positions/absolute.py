"""Absolute position encodings added to the token embeddings."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array


@register("none")
class NoPositionEncoding(PositionEncoding):
    """No position signal at all (NoPE); a causal mask still orders tokens."""


@register("learned")
class LearnedAbsolute(PositionEncoding):
    """A learned table of `max_position_embeddings` vectors, as in BERT.

    Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
    Transformers for Language Understanding": e(t) = P[t] with P trained.
    Positions at or past the table size cannot be represented.
    """

    def max_length(self) -> int | None:
        return self.config.max_position_embeddings

    @nn.compact
    def embed(self, positions: Array) -> Array:
        table = nn.Embed(
            self.config.max_position_embeddings,
            self.config.embedding_dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(self.config.initializer_range),
                (None, "embed"),
            ),
            name="table",
        )
        return table(positions)


def sinusoid_table(positions: Array, dim: int) -> Array:
    """Return float32 `[..., dim]` sinusoids of Vaswani et al. 2017.

    PE(t, 2i) = sin(t / 10000^(2i/dim)), PE(t, 2i+1) = cos(t / 10000^(2i/dim)).
    """
    if dim % 2:
        raise ValueError(
            f"Sinusoidal positions need an even embedding size, got {dim}."
        )
    inverse = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * inverse
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return table.reshape(*positions.shape, dim)


@register("sinusoidal")
class SinusoidalAbsolute(PositionEncoding):
    """Fixed sinusoids added to the embeddings (Vaswani et al. 2017,
    "Attention Is All You Need"); computed on the fly, so no length limit."""

    def embed(self, positions: Array) -> Array:
        # NOTE: the sinusoids have unit amplitude, while token embeddings start
        # at std `initializer_range` (0.02) and are not multiplied by sqrt(D)
        # as in Vaswani et al., so early in training the position signal
        # dominates the token signal.
        return sinusoid_table(positions, self.config.embedding_dim)
