"""RoFormer models: the encoder, the causal decoder, and their LM heads.

Dimension alphabet: B batch, T length, D model dim, E embedding dim, V
vocabulary. Every model takes explicit `positions` and `segment_ids`
(`[B, T]` int32; segment 0 marks padding, distinct ids separate packed
documents), so decoding offsets, packing and left padding share one path.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.attention import masks
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.layers import (
    DecodeState,
    Embeddings,
    block_class,
    dense_init,
    layer_norm,
)

Array = jax.Array


class Transformer(nn.Module):
    """Embeddings and a stack of blocks; the encoder or, if causal, decoder."""

    config: ModelConfig

    def setup(self):
        config = self.config
        self.embeddings = Embeddings(config)
        block = block_class(config)
        self.blocks = [
            block(config, name=f"layer_{i}") for i in range(config.num_layers)
        ]
        if config.pre_layer_norm:
            self.final_layer_norm = layer_norm(config, "final_layer_norm")
        if config.causal:
            self.decode_state = DecodeState(name="decode_state")

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        token_types: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """Return `[B, T, D]` hidden states for `[B, T]` int32 tokens.

        With `decode=True` (causal models only) the tokens continue the
        sequences held in the mutable `cache` collection; `init` with
        `decode=True` and `[B, S]` inputs creates a cache of S slots.
        """
        x = self.embeddings(tokens, positions, token_types, deterministic=deterministic)
        cache = None
        if decode:
            if not self.config.causal:
                raise ValueError(
                    "decode=True needs a causal model (model.causal=True); an "
                    "encoder sees every token at once and has no decoding order."
                )
            cache, mask = self.decode_state(positions, segment_ids)
        else:
            # Each layer builds the [B, 1, T, S] mask from the ids only if its
            # attention path needs it, so the chunked path never does.
            mask = masks.SegmentMask(
                segment_ids, segment_ids, causal=self.config.causal
            )
        for block in self.blocks:
            # `deterministic` by position, as `block_class` requires.
            x = block(x, positions, mask, deterministic, cache)
        if self.config.pre_layer_norm:
            x = self.final_layer_norm(x)
        return x

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


class LMHead(nn.Module):
    """Dense D -> E, GELU, LayerNorm, then the tied token embeddings plus a
    bias: the masked-LM head of BERT and RoFormer, also used for causal LM."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, transformer: Transformer) -> Array:
        config = self.config
        x = nn.Dense(
            config.embedding_dim,
            dtype=config.dtype,
            kernel_init=dense_init(config, ("embed", None)),
            name="transform",
        )(x)
        x = nn.gelu(x, approximate=False)
        x = layer_norm(config, "layer_norm")(x)
        logits = transformer.attend(x.astype(jnp.float32))  # [B, T, V]
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (config.vocab_size,),
        )
        return logits + bias


class LanguageModel(nn.Module):
    """A transformer with the tied LM head: masked LM unless `config.causal`.

    Returns float32 `[B, T, V]` logits, or `[B, P, V]` at the `[B, P]` indices
    `prediction_positions` when given. Masked-LM training predicts only the
    masked tokens, so gathering them first skips most of the vocabulary matmul.
    """

    config: ModelConfig

    def setup(self):
        self.transformer = Transformer(self.config, name="transformer")
        self.lm_head = LMHead(self.config, name="lm_head")

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        token_types: Array | None = None,
        prediction_positions: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        x = self.transformer(
            tokens,
            positions,
            segment_ids,
            token_types,
            deterministic=deterministic,
            decode=decode,
        )
        if prediction_positions is not None:
            x = jnp.take_along_axis(x, prediction_positions[..., None], axis=1)
        return self.lm_head(x, self.transformer)
