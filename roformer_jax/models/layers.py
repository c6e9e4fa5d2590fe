"""Building blocks of the RoFormer transformer.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim, D model dim, E embedding dim, F feed-forward dim, V vocabulary.
Parameters carry logical sharding axes (`vocab`, `embed`, `heads`, `kv`,
`mlp`), and activations carry sharding constraints in the same logical axes
(plus `batch` and `length`) at block boundaries. The rules in
`config.mesh.axis_rules` map logical axes to mesh axes. Outside an
`nn.logical_axis_rules` context with a mesh set, as in tests and decoding,
the constraints do nothing.
"""

import functools
import logging
import zlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax import positions as position_encodings
from roformer_jax import rotary
from roformer_jax.attention import chunked, linear, masks, softmax
from roformer_jax.dropout import Dropout
from roformer_jax.model_config import ModelConfig

Array = jax.Array

logger = logging.getLogger(__name__)

# Logical axes of the activations that carry sharding constraints.
HIDDEN_AXES = ("batch", "length", "embed")  # [B, T, D] between blocks.
HEAD_AXES = ("batch", "length", "heads", "kv")  # [B, T, N, H] queries, keys, values.
MLP_AXES = ("batch", "length", "mlp")  # [B, T, F] feed-forward hidden.


def dense_init(config: ModelConfig, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(
        nn.initializers.normal(config.initializer_range), axes
    )


class DenseGeneralPartitioned(nn.LogicallyPartitioned):
    """Logical partitioning metadata that adds no sharding constraint while the
    value lacks one dimension per logical name.

    `nn.DenseGeneral` (flax 0.12.8) initialises a `[D, N, H]` kernel and an
    `[N, H]` bias as flat `[D, N * H]` and `[N * H]` arrays, and unboxes them
    before the reshape. Under a mesh context (`jax.set_mesh`,
    `jax.sharding.use_abstract_mesh`), as in the train step, the stock
    `nn.LogicallyPartitioned` then constrains the flat value with too many
    names and raises. `apply` runs initialisers under `jax.eval_shape` to
    check parameter shapes, so this happens on every call, not only in `init`.
    """

    def unbox(self, apply_constraint: bool = True):
        if len(self.value.shape) != len(self.names):
            return self.value
        return super().unbox(apply_constraint)


def dense_general_partitioning(initializer, axes: tuple[str | None, ...]):
    """Wrap `initializer` as `nn.with_logical_partitioning` does, for the
    kernel and bias of an `nn.DenseGeneral` with several feature axes."""

    def init(*args, **kwargs) -> DenseGeneralPartitioned:
        return DenseGeneralPartitioned(initializer(*args, **kwargs), axes)

    return init


def layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=config.dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class Embeddings(nn.Module):
    """Token, token-type and absolute position embeddings, then LayerNorm.

    With pre-LayerNorm blocks the LayerNorm here is skipped, because every
    block normalises its own input. When `embedding_size` differs from
    `hidden_size`, a dense layer projects E to D.
    """

    config: ModelConfig

    def setup(self):
        config = self.config
        self.token = nn.Embed(
            config.vocab_size,
            config.embedding_dim,
            embedding_init=dense_init(config, ("vocab", "embed")),
            name="token",
        )
        if config.type_vocab_size:
            self.token_type = nn.Embed(
                config.type_vocab_size,
                config.embedding_dim,
                embedding_init=dense_init(config, (None, "embed")),
                name="token_type",
            )
        encoding = position_encodings.get(config.position_encoding)
        self.position = encoding(config, name="position")
        if not config.pre_layer_norm:
            self.layer_norm = layer_norm(config, "layer_norm")
        self.dropout = Dropout(config.dropout_rate)
        if config.embedding_dim != config.hidden_size:
            self.projection = nn.Dense(
                config.hidden_size,
                dtype=config.dtype,
                kernel_init=dense_init(config, (None, "embed")),
                name="projection",
            )

    def attend(self, x: Array) -> Array:
        """Project `[B, T, E]` onto the token embeddings: `[B, T, V]` logits."""
        return self.token.attend(x)

    def __call__(self, tokens, positions, token_types, *, deterministic: bool):
        config = self.config
        x = self.token(tokens)  # [B, T, E]
        if config.type_vocab_size:
            if token_types is None:
                token_types = jnp.zeros_like(tokens)
            x = x + self.token_type(token_types)
        absolute = self.position.embed(positions)
        if absolute is not None:
            x = x + absolute
        if not config.pre_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        if config.embedding_dim != config.hidden_size:
            x = self.projection(x)
        return nn.with_logical_constraint(x.astype(config.dtype), HIDDEN_AXES)


# Position encodings that linear attention can use: those that only add
# embeddings to the input, and RoPE, which rotates the feature maps. The
# others add a bias to, or need, the T x S logits that linear attention
# never forms.
LINEAR_ATTENTION_ENCODINGS = ("none", "learned", "sinusoidal", "rope")

# Position encodings that the chunked softmax path can use: those that add
# nothing to the logits and never read the attention weights. The others
# return a [B or 1, N or 1, T, S] bias (or need the weights), which is the
# T x S memory the chunked path avoids.
CHUNKED_ATTENTION_ENCODINGS = (
    "none",
    "learned",
    "sinusoidal",
    "rope",
    "rope_learned",
    "rope_2d",
    "xpos",
)

# Values of `ModelConfig.remat`; `block_class` reads them.
REMAT_POLICIES = ("none", "block", "dots_saveable")

# (attention_impl, reason) pairs already logged by `_warn_fallback`.
_LOGGED_FALLBACKS: set[tuple[str, str]] = set()


def _warn_fallback(requested: str, reason: str) -> None:
    """Log once per process and reason that an attention path fell back to xla."""
    if (requested, reason) in _LOGGED_FALLBACKS:
        return
    _LOGGED_FALLBACKS.add((requested, reason))
    logger.warning(
        "model.attention_impl=%r cannot run because %s; using the xla path. "
        "This warning is logged once per reason.",
        requested,
        reason,
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with the configured position encoding.

    `config.attention_impl` picks the softmax kernel (`softmax.IMPLEMENTATIONS`):

    - "xla": `softmax.fused_attention`, or the einsum path when attention
      dropout is active or the encoding reads the weights (Shaw).
    - "chunked": `chunked.chunked_attention`, O(T * chunk) memory. It needs an
      encoding in `CHUNKED_ATTENTION_ENCODINGS` and raises ValueError for
      others, and in training it raises ValueError when
      `attention_dropout_rate` > 0 rather than fall back to the T x S path.
    - "cudnn" and "pallas": the GPU and TPU flash kernels. When the backend,
      dtype, head dim, bias, dropout or encoding rules them out
      (`softmax.select_implementation`), they fall back to "xla" and log one
      warning per reason.
    - "auto": cudnn on a GPU and pallas on a TPU where they can run, else xla,
      without a warning.

    The non-xla paths need the mask as a `masks.SegmentMask`, which
    `Transformer` passes. Given a dense `[B, 1, T, S]` mask, as in cached
    decoding, every setting runs the xla path.
    """

    config: ModelConfig

    def _favor_key(self) -> jax.Array:
        """The key of this layer's FAVOR+ projection.

        Training passes a `favor` key per redraw period. Without one
        (evaluation, inference) each layer uses a fixed key from its path.
        """
        if self.has_rng("favor"):
            return self.make_rng("favor")
        path = "/".join(str(name) for name in self.scope.path)
        return jax.random.PRNGKey(zlib.crc32(path.encode("utf-8")))

    def _linear_attention(self, q, k, v, positions, mask):
        config = self.config
        # A key is visible to some query exactly when it is not padding.
        # NOTE: only padding is masked. Packed documents (several segment ids
        # in a row) would attend to each other.
        if isinstance(mask, masks.SegmentMask):
            key_mask = mask.k_segment_ids != 0
        else:
            key_mask = None if mask is None else jnp.any(mask, axis=(1, 2))
        if config.linear_feature_map == "elu":
            q_features, k_features = (
                linear.elu_feature_map(q),
                linear.elu_feature_map(k),
            )
        else:
            projection = linear.favor_projection(
                self._favor_key(), config.favor_num_features, config.head_dim
            )
            q_features, k_features = linear.favor_features(q, k, projection)
        rotate = None
        if config.position_encoding == "rope":
            rotate = functools.partial(
                rotary.apply_rotary,
                base=config.rotary_base,
                layout=config.rotary_layout,
            )
        return linear.linear_attention(
            q_features,
            k_features,
            v,
            causal=config.causal,
            key_mask=key_mask,
            rotate=rotate,
            q_positions=positions,
            k_positions=positions,
            chunk_size=config.linear_chunk_size,
        )

    @nn.compact
    def __call__(
        self,
        x,
        positions,
        mask,
        *,
        deterministic: bool,
        cache: "DecodeCache | None" = None,
    ):
        """Attend over `x`, or over the key/value cache when `cache` is given.

        `mask` is a `masks.SegmentMask`, or a bool `[B, 1, T, S]` array that
        is True where attention is allowed. In decoding, the `[B, T]` new
        tokens write their keys and values at slots `cache.start` onwards,
        and the queries attend over all `S` slots, with the `[B, 1, T, S]`
        mask hiding empty slots and padding.
        Keys and values are cached before the position encoding, which then
        applies to each key at its own position, so every encoding decodes the way
        it trains.
        """
        config = self.config
        n, h = config.num_heads, config.head_dim

        def project(name):
            projected = nn.DenseGeneral(
                (n, h),
                dtype=config.dtype,
                kernel_init=dense_general_partitioning(
                    nn.initializers.normal(config.initializer_range),
                    ("embed", "heads", "kv"),
                ),
                bias_init=dense_general_partitioning(
                    nn.initializers.zeros, ("heads", "kv")
                ),
                name=name,
            )(x)  # [B, T, D] -> [B, T, N, H]
            return nn.with_logical_constraint(projected, HEAD_AXES)

        q, k, v = project("query"), project("key"), project("value")
        if config.attention == "linear":
            if cache is not None:
                raise ValueError(
                    "Cached decoding needs model.attention='softmax'; "
                    "model.attention='linear' has no key/value cache yet."
                )
            out = self._linear_attention(q, k, v, positions, mask)
            return self._output(out)
        k_positions = positions
        if cache is not None:
            k, v = self._update_cache(k, v, cache.start)
            k_positions = cache.key_positions
        encoding = position_encodings.get(config.position_encoding)
        position = encoding(config, name="position")
        # NOTE: on the XLA CPU backend (jax 0.10.2) the forward rotation of q
        # and k fuses with their transpose for the attention einsums, so it
        # adds no pass over them. The backward pass adds two (a copy and an
        # add over dq and dk; `python -m benchmarks.op_profile` shows them),
        # and GPU and TPU fusion is unchecked.
        q, k, v, bias = position.transform(q, k, v, positions, k_positions)
        use_dropout = not deterministic and config.attention_dropout_rate > 0.0
        segments = mask if isinstance(mask, masks.SegmentMask) else None
        implementation = self._implementation(position, bias, use_dropout, segments)
        if implementation == "chunked":
            out = chunked.chunked_attention(
                q,
                k,
                v,
                q_segment_ids=segments.q_segment_ids,
                k_segment_ids=segments.k_segment_ids,
                causal=segments.causal,
                chunk_size=config.attention_chunk_size,
            )
            return self._output(out)
        if implementation == "cudnn":
            return self._output(softmax.cudnn_attention(q, k, v, mask=segments))
        if implementation == "pallas":
            out = softmax.pallas_attention(q, k, v, mask=segments, bias=bias)
            return self._output(out)
        if segments is not None:
            mask = segments.dense()
        if not (position.needs_attention_weights or use_dropout):
            out = softmax.fused_attention(q, k, v, mask=mask, bias=bias)
        else:
            # The fused kernel has no dropout and hides the weights.
            weights = softmax.attention_weights(
                q,
                k,
                mask=mask,
                bias=bias,
                dropout_rate=config.attention_dropout_rate if use_dropout else 0.0,
                dropout_rng=self.make_rng("dropout") if use_dropout else None,
            )
            out = softmax.weighted_values(weights, v)
            offsets = position.value_offsets(weights, positions, k_positions)
            if offsets is not None:
                out = out + offsets.astype(out.dtype)
        return self._output(out)

    def _implementation(self, position, bias, use_dropout, segments) -> str:
        """Return the softmax path to run, raising for what chunked cannot do."""
        config = self.config
        if config.attention_impl == "chunked" and segments is not None:
            if bias is not None or position.needs_attention_weights:
                raise ValueError(
                    "model.attention_impl='chunked' cannot run "
                    f"model.position_encoding={config.position_encoding!r}, "
                    "which adds a T x S logit bias or reads the attention "
                    "weights. Use an encoding in "
                    f"{list(CHUNKED_ATTENTION_ENCODINGS)}, or "
                    "model.attention_impl='xla'."
                )
            if use_dropout:
                raise ValueError(
                    "model.attention_impl='chunked' has no attention dropout, "
                    "but model.attention_dropout_rate="
                    f"{config.attention_dropout_rate} applies in training. Set "
                    "it to 0, or use model.attention_impl='xla'."
                )
        implementation, reason = softmax.select_implementation(
            config.attention_impl,
            backend=softmax.current_backend(),
            dtype=config.dtype,
            head_dim=config.head_dim,
            has_bias=bias is not None,
            needs_weights=position.needs_attention_weights,
            dropout=use_dropout,
            has_segment_ids=segments is not None,
        )
        if reason is not None:
            _warn_fallback(config.attention_impl, reason)
        return implementation

    def _update_cache(self, k, v, start):
        """Write `[B, T, N, H]` keys and values at slot `start` of the cache
        and return the whole `[B, S, N, H]` cache.

        The first call, from `init`, only creates the cache: its shape is
        that of the `[B, S]` inputs `init` was given.
        """
        created = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        if not created:
            return k, v
        index = (0, start, 0, 0)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, index)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, index)
        return cached_k.value, cached_v.value

    def _output(self, out):
        config = self.config
        return nn.DenseGeneral(
            config.hidden_size,
            axis=(-2, -1),
            dtype=config.dtype,
            kernel_init=dense_general_partitioning(
                nn.initializers.normal(config.initializer_range),
                ("heads", "kv", "embed"),
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="output",
        )(out)  # [B, T, N, H] -> [B, T, D]


class FeedForward(nn.Module):
    """Dense D -> F, exact GELU, dense F -> D, as in BERT and RoFormer."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        config = self.config
        x = nn.Dense(
            config.mlp_dim,
            dtype=config.dtype,
            kernel_init=dense_init(config, ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="intermediate",
        )(x)
        x = nn.with_logical_constraint(x, MLP_AXES)  # [B, T, F]
        x = nn.gelu(x, approximate=False)
        x = nn.Dense(
            config.hidden_size,
            dtype=config.dtype,
            kernel_init=dense_init(config, ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="output",
        )(x)
        return x


class Block(nn.Module):
    """One transformer layer, post-LayerNorm (BERT, RoFormer) or pre-LayerNorm.

    `deterministic` may be passed by position, which `nn.remat` needs to
    treat it as static (`block_class`).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x,
        positions,
        mask,
        deterministic: bool = True,
        cache: "DecodeCache | None" = None,
    ):
        config = self.config
        dropout = Dropout(config.dropout_rate)
        attention = SelfAttention(config, name="attention")
        feed_forward = FeedForward(config, name="feed_forward")
        norm_attention = layer_norm(config, "attention_layer_norm")
        norm_feed_forward = layer_norm(config, "feed_forward_layer_norm")
        if config.pre_layer_norm:
            y = attention(
                norm_attention(x),
                positions,
                mask,
                deterministic=deterministic,
                cache=cache,
            )
            x = x + dropout(y, deterministic=deterministic)
            y = feed_forward(norm_feed_forward(x), deterministic=deterministic)
            x = x + dropout(y, deterministic=deterministic)
        else:
            y = attention(x, positions, mask, deterministic=deterministic, cache=cache)
            x = norm_attention(x + dropout(y, deterministic=deterministic))
            y = feed_forward(x, deterministic=deterministic)
            x = norm_feed_forward(x + dropout(y, deterministic=deterministic))
        return nn.with_logical_constraint(x, HIDDEN_AXES)


def block_class(config: ModelConfig) -> type[Block]:
    """Return `Block`, or `Block` under `nn.remat` as `config.remat` selects.

    "block" saves only each block's inputs and recomputes the rest in the
    backward pass. "dots_saveable" also saves the outputs of matmuls without
    batch dimensions (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`),
    which are the dense projections, and recomputes the rest, the attention
    scores included.
    The wrapped class takes the same parameters under the same names, so
    checkpoints load either way. Call it as
    `block(x, positions, mask, deterministic, cache)` with `deterministic`
    by position.

    NOTE: the XLA CPU backend of jax 0.10.2 reports the same compiled temp
    memory with and without remat (`memory_analysis()`), and the saving on a
    GPU or TPU has not been measured in this repository.
    """
    if config.remat not in REMAT_POLICIES:
        raise ValueError(
            f"model.remat={config.remat!r} is invalid; use one of {REMAT_POLICIES}."
        )
    if config.remat == "none":
        return Block
    policy = None
    if config.remat == "dots_saveable":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    # Argument 4 of Block.__call__, counting self as 0, is `deterministic`.
    return nn.remat(Block, static_argnums=(4,), policy=policy)


def attention_mask(config: ModelConfig, segment_ids: Array) -> Array:
    """Build the `[B, 1, T, S]` mask for padding, packing and (if causal) order."""
    length = segment_ids.shape[1]
    causal = masks.causal_mask(length, length) if config.causal else None
    return masks.combine(masks.segment_mask(segment_ids, segment_ids), causal)


@flax.struct.dataclass
class DecodeCache:
    """Placement of a decoding step's new tokens in the key/value cache.

    `start` is the first cache slot the `[B, T]` new tokens fill, and
    `key_positions` the `[B, S]` positions of every slot after they are
    written.
    """

    start: Array
    key_positions: Array


class DecodeState(nn.Module):
    """The per-sequence part of the key/value cache: how many slots are
    filled, and each slot's position and segment id.

    Calling it with the `[B, T]` positions and segment ids of new tokens
    records them and returns the `DecodeCache` for the layers and the
    `[B, 1, T, S]` mask: a query attends to the filled slots of its own
    segment up to its own slot. With left-padded prompts the slot order is the
    time order, so this equals the causal mask of a full forward pass.
    """

    @nn.compact
    def __call__(self, positions: Array, segment_ids: Array):
        created = self.has_variable("cache", "length")
        length = self.variable("cache", "length", lambda: jnp.zeros((), jnp.int32))
        slot_positions = self.variable(
            "cache", "positions", jnp.zeros, positions.shape, jnp.int32
        )
        slot_segments = self.variable(
            "cache", "segment_ids", jnp.zeros, segment_ids.shape, jnp.int32
        )
        if not created:
            start = jnp.zeros((), jnp.int32)
            mask = masks.combine(
                masks.segment_mask(segment_ids, segment_ids),
                masks.causal_mask(positions.shape[1], positions.shape[1]),
            )
            return DecodeCache(start=start, key_positions=positions), mask
        start = length.value
        slot_positions.value = jax.lax.dynamic_update_slice(
            slot_positions.value, positions.astype(jnp.int32), (0, start)
        )
        slot_segments.value = jax.lax.dynamic_update_slice(
            slot_segments.value, segment_ids.astype(jnp.int32), (0, start)
        )
        length.value = start + positions.shape[1]
        num_slots = slot_segments.value.shape[1]
        query_slots = start + jnp.arange(positions.shape[1])
        filled = jnp.arange(num_slots)[None, :] <= query_slots[:, None]  # [T, S]
        mask = masks.combine(
            masks.segment_mask(segment_ids, slot_segments.value),
            filled[None, None, :, :],
        )
        return DecodeCache(start=start, key_positions=slot_positions.value), mask
