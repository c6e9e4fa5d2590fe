"""FIRE, functional interpolation for relative positions (Li et al. 2023,
"Functional Interpolation for Relative Positions Improves Long Context
Transformers", arXiv 2310.04418).

Dimension alphabet: B batch, T query length, S key length, N heads. W is the
hidden width `fire_mlp_width` of the distance MLP.

For query position i and key position j, the bias of all N heads is

    f_theta(psi(i - j) / psi(max(L, i))),   psi(x) = log(|c| x + 1),

where f_theta is an MLP with one ReLU hidden layer of width W and N outputs,
and c and the threshold L are learned scalars. Dividing by psi(max(L, i))
keeps every distance a causal query can see in [0, 1], and past L it
normalises by the query's own position, so longer inputs reuse the range seen
in training. Because the normaliser depends on
the absolute query position, the bias is not invariant to shifting all
positions, except while every query position stays at or below L.

The paper's causal form uses i - j >= 0. Here the distance is |i - j|, which
equals i - j for every key a causal mask leaves visible (positions increase
along a causal sequence), and which makes the bias symmetric for bidirectional
models. A key after a small query position can then give a ratio above 1,
because the normaliser stays the query's.

Parameters and initialisation, following the PyTorch FIRE module in
github.com/mcleish7/arithmetic (cramming/architectures/embeddings.py):

- `distance_scale` is c, initially 0.1, and psi uses |c|.
- `threshold_multiplier` is m, initially 1.0, with L = |m| * 512. Storing a
  multiplier near 1 instead of L keeps that parameter on the scale of the
  others.
- psi(max(L, i)) gets 1e-6 added so that c = 0 cannot divide by zero.
- The MLP layers `hidden` and `output` start like PyTorch's `nn.Linear`:
  kernel and bias uniform in +-1/sqrt(fan_in). The model's usual normal
  initialiser with `initializer_range` would start the bias near zero.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array

_INITIAL_DISTANCE_SCALE = 0.1  # c
_THRESHOLD_UNIT = 512.0  # L = |threshold_multiplier| * this.
_NORMALISER_EPSILON = 1e-6


def _linear_uniform_init(fan_in: int):
    """Sample uniformly in +-1/sqrt(fan_in), PyTorch's nn.Linear default."""
    limit = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)

    return init


def _dense(features: int, fan_in: int, kernel_axes, bias_axes, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            _linear_uniform_init(fan_in), kernel_axes
        ),
        bias_init=nn.with_logical_partitioning(_linear_uniform_init(fan_in), bias_axes),
        name=name,
    )


@register("fire")
class FIRE(PositionEncoding):
    """A learned MLP of the log-scaled, query-normalised distance."""

    def _scalar(self, name: str, value: float) -> Array:
        return self.param(
            name,
            nn.with_logical_partitioning(nn.initializers.constant(value), ()),
            (),
            jnp.float32,
        )

    @nn.compact
    def transform(self, q, k, v, q_positions, k_positions):
        """Return q, k, v unchanged and the float32 `[B, N, T, S]` bias.

        NOTE: the hidden layer materialises a float32 `[B, T, S, W]` array, W
        times the size of the attention logits, unless XLA fuses it into the
        output layer.
        """
        config = self.config
        c = jnp.abs(self._scalar("distance_scale", _INITIAL_DISTANCE_SCALE))
        threshold = jnp.abs(self._scalar("threshold_multiplier", 1.0)) * _THRESHOLD_UNIT

        distance = jnp.abs(k_positions[:, None, :] - q_positions[:, :, None])
        distance = distance.astype(jnp.float32)  # [B, T, S]
        query = q_positions.astype(jnp.float32)  # [B, T]
        normaliser = jnp.log1p(c * jnp.maximum(threshold, query)) + _NORMALISER_EPSILON
        ratio = jnp.log1p(c * distance) / normaliser[:, :, None]  # [B, T, S]

        width = config.fire_mlp_width
        hidden = _dense(width, 1, (None, None), (None,), "hidden")(ratio[..., None])
        hidden = nn.relu(hidden)  # [B, T, S, W]
        bias = _dense(config.num_heads, width, (None, "heads"), ("heads",), "output")(
            hidden
        )  # [B, T, S, N]
        return q, k, v, jnp.transpose(bias, (0, 3, 1, 2))
