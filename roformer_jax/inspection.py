"""Attention maps of a trained model, for notebooks and analysis.

Dimension alphabet: L layers, B batch, T query length, S key length, N heads,
H head dim.

The fused attention kernel never materialises the softmax weights, so
`attention_maps` recomputes them. One forward pass captures the queries and
keys that each layer's `query` and `key` projections return. The layer's own
position encoding then transforms them, as `SelfAttention` does, and
`softmax.attention_weights` turns them into weights under the model's mask.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from roformer_jax import positions as position_encodings
from roformer_jax.attention import softmax
from roformer_jax.model_config import ModelConfig
from roformer_jax.models.layers import attention_mask

Array = jax.Array

# Names of the projections inside `SelfAttention` and of its encoding module.
_PROJECTIONS = ("query", "key", "value")
_POSITION_MODULE = "position"


def attention_maps(
    model: nn.Module,
    params,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    token_types: Array | None = None,
) -> Array:
    """Compute the softmax attention weights of every layer and head.

    Args:
      model: a `LanguageModel`, `Transformer` or `SequenceClassifier` whose
        `config` is a `ModelConfig` with `attention="softmax"`.
      params: the model's ``params`` collection, boxed or not.
      tokens: ``[B, T]`` int32 token ids.
      positions: ``[B, T]`` int32 positions.
      segment_ids: ``[B, T]`` int32 segment ids, 0 for padding.
      token_types: optional ``[B, T]`` token types, for models that have them.

    Returns:
      ``[L, B, N, T, S]`` float32 weights with S = T, in evaluation mode (no
      dropout). Each query row sums to 1 over the keys its mask allows and is
      0 elsewhere. A padding query has no visible key and gets a row of zeros.

    Raises:
      ValueError: the model uses linear attention, which never forms the T x S
        weights, or the forward pass did not run the expected attention layers.
    """
    config: ModelConfig = model.config
    if config.attention == "linear":
        raise ValueError(
            "model.attention='linear' never forms the T x S attention weights, "
            "so it has no attention maps. Use a model with attention='softmax'."
        )
    params = nn.meta.unbox(params)
    inputs = (tokens, positions, segment_ids)
    if token_types is not None:
        inputs += (token_types,)

    # NOTE: this repeats SelfAttention's softmax path (position transform, then
    # softmax.attention_weights) because the model returns no weights. Tests
    # check that the maps reproduce each layer's output, so a change to that
    # path which is not mirrored here fails them.
    def compute(params, *inputs):
        projections = _capture_projections(model, params, inputs)
        mask = attention_mask(config, inputs[2])
        maps = []
        for layer_path, (q, k, v) in projections.items():
            encoding = position_encodings.get(config.position_encoding)(config)
            variables = {"params": _subtree(params, (*layer_path, _POSITION_MODULE))}
            q, k, _, bias = encoding.apply(
                variables, q, k, v, inputs[1], inputs[1], method="transform"
            )
            maps.append(softmax.attention_weights(q, k, mask=mask, bias=bias))
        return jnp.stack(maps)

    return jax.jit(compute)(params, *inputs)


def _capture_projections(
    model: nn.Module, params, inputs: tuple[Array, ...]
) -> dict[tuple[str, ...], tuple[Array, Array, Array]]:
    """Run the model once and return each attention layer's ``[B, T, N, H]``
    queries, keys and values, keyed by the layer's module path, in call order."""

    def is_projection(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and module.name in _PROJECTIONS

    _, state = model.apply(
        {"params": params},
        *inputs,
        capture_intermediates=is_projection,
        mutable=["intermediates"],
    )
    flat = traverse_util.flatten_dict(state["intermediates"])
    found: dict[tuple[str, ...], dict[str, Array]] = {}
    for path, outputs in flat.items():
        # path: (*attention_module_path, projection_name, "__call__")
        found.setdefault(path[:-2], {})[path[-2]] = outputs[0]

    num_layers = model.config.num_layers
    complete = {
        layer: tuple(arrays[name] for name in _PROJECTIONS)
        for layer, arrays in found.items()
        if set(arrays) == set(_PROJECTIONS)
    }
    if len(complete) != num_layers:
        raise ValueError(
            f"The forward pass ran {len(complete)} attention layers with "
            f"{'/'.join(_PROJECTIONS)} projections, but model.num_layers="
            f"{num_layers}. attention_maps needs SelfAttention's projections to "
            f"keep the names {_PROJECTIONS}."
        )
    return complete


def _subtree(params, path: tuple[str, ...]) -> dict:
    """Return the parameters under `path`, or an empty dict when the module has
    none (position encodings without parameters)."""
    node = params
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            return {}
        node = node[name]
    return node
