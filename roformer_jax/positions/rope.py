"""Rotary position encodings: `rope`, `rope_learned` and `rope_2d`.

RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864) rotates queries and keys at position m pairwise
by the angles ``m * theta_i`` with ``theta_i = base ** (-2i/d)``, so
``q_m . k_n`` depends on m - n only. With `rotary_value` the values are
rotated by their key positions too, as RoFormer's original release allows.
`xpos` (roformer_jax/positions/xpos.py) is the fourth member of the family.

Dimension alphabet: B batch, T query length, S key length, N heads, H head
dim. Queries, keys and values are ``[B, T or S, N, H]`` and positions are
``[B, T or S]`` integers.

Every encoding here rotates the first d features of each head, where d is
`model.rotary_dim`, or when that is None the even number nearest
``model.rotary_fraction * H`` (`resolve_rotary_dim`). Angles, sine and cosine
are float32 whatever the compute dtype.

`validate_rope_options` checks the options these encodings read. Each encoding
calls it when it is traced, and config validation can call it earlier.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from roformer_jax import rope_scaling, rotary
from roformer_jax.model_config import ModelConfig
from roformer_jax.positions.base import PositionEncoding, register

Array = jax.Array

# Encodings that read the rotary options that `validate_rope_options` checks.
ROPE_ENCODINGS: tuple[str, ...] = ("rope", "rope_learned", "rope_2d", "xpos")


def validate_rope_options(config: ModelConfig) -> None:
    """Check the rotary options of a model config.

    Checks that hold for every encoding: `rope_scaling` is a known name, its
    factor is at least 1, the original length is a positive int, the rotary
    fraction is in (0, 1], and rescaling is used only with the `rope`
    encoding. Checks made only for the encodings in `ROPE_ENCODINGS`: the
    rotated width and layout, and the options of the chosen rescaling and of
    `rope_2d` or `xpos`.

    Raises:
      ValueError: naming the first invalid field as ``model.<field>=<value>``
        and the valid values.
    """
    _check_scaling_options(config)
    if config.position_encoding not in ROPE_ENCODINGS:
        return

    if config.rotary_layout not in rotary.LAYOUTS:
        raise ValueError(
            f"model.rotary_layout={config.rotary_layout!r} is invalid. "
            f"Use one of {rotary.LAYOUTS}."
        )
    rotary_dim = resolve_rotary_dim(config)
    if config.rope_scaling in ("ntk", "dynamic_ntk") and rotary_dim < 4:
        raise ValueError(
            f"model.rope_scaling={config.rope_scaling!r} needs at least 4 rotated "
            f"features, whose exponent d / (d - 2) is finite, but {rotary_dim} are "
            "rotated. Raise model.rotary_dim or model.rotary_fraction."
        )
    if config.position_encoding == "rope_2d":
        if rotary_dim % 4:
            raise ValueError(
                f"model.rotary_dim={config.rotary_dim} (with "
                f"model.rotary_fraction={config.rotary_fraction}) rotates "
                f"{rotary_dim} features, but rope_2d splits the pairs evenly "
                "between rows and columns. Rotate a multiple of 4 features."
            )
        if config.rotary_grid_width < 1:
            raise ValueError(
                f"model.rotary_grid_width={config.rotary_grid_width} is invalid. "
                "Use the number of patches per image row, a positive int."
            )
    if config.position_encoding == "xpos" and not config.xpos_scale_base > 0:
        raise ValueError(
            f"model.xpos_scale_base={config.xpos_scale_base} is invalid. Use a "
            "positive decay length such as 512."
        )


def _check_scaling_options(config: ModelConfig) -> None:
    scaling = config.rope_scaling
    if scaling not in rope_scaling.ROPE_SCALINGS:
        raise ValueError(
            f"model.rope_scaling={scaling!r} is invalid. "
            f"Use one of {rope_scaling.ROPE_SCALINGS}."
        )
    factor = config.rope_scaling_factor
    if not (factor >= 1 and math.isfinite(factor)):
        raise ValueError(
            f"model.rope_scaling_factor={factor} is invalid. Use the target "
            "length divided by model.rope_original_max_length, a finite number "
            "of at least 1."
        )
    length = config.rope_original_max_length
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(
            f"model.rope_original_max_length={length!r} is invalid. Use the "
            "training length of the model, a positive int."
        )
    if not 0 < config.rotary_fraction <= 1:
        raise ValueError(
            f"model.rotary_fraction={config.rotary_fraction} is invalid. Use a "
            "fraction of each head in (0, 1], for example 0.25 or 1.0."
        )
    if scaling != "none" and config.position_encoding != "rope":
        raise ValueError(
            f"model.rope_scaling={scaling!r} is read only by the 'rope' encoding, "
            f"not by model.position_encoding={config.position_encoding!r}. "
            "Set model.rope_scaling='none' or model.position_encoding='rope'."
        )
    if scaling == "yarn" and not config.yarn_beta_fast > config.yarn_beta_slow >= 0:
        raise ValueError(
            f"model.yarn_beta_fast={config.yarn_beta_fast} and "
            f"model.yarn_beta_slow={config.yarn_beta_slow} are invalid. Use "
            "yarn_beta_fast > yarn_beta_slow >= 0, for example 32 and 1."
        )
    low, high = config.llama3_low_freq_factor, config.llama3_high_freq_factor
    if scaling == "llama3" and not high > low > 0:
        raise ValueError(
            f"model.llama3_low_freq_factor={low} and "
            f"model.llama3_high_freq_factor={high} are invalid. Use "
            "llama3_high_freq_factor > llama3_low_freq_factor > 0, for example "
            "4 and 1."
        )


def resolve_rotary_dim(config: ModelConfig) -> int:
    """Return the rotated width d: `rotary_dim` if set, else from `rotary_fraction`.

    Raises:
      ValueError: naming the field, for an odd, non-positive or too large
        rotary_dim, or a fraction outside (0, 1].
    """
    head_dim = config.head_dim
    if config.rotary_dim is None:
        try:
            return rotary.rotary_dim_from_fraction(head_dim, config.rotary_fraction)
        except ValueError as error:
            raise ValueError(
                f"model.rotary_fraction={config.rotary_fraction} is invalid for "
                f"head dim {head_dim}: {error}"
            ) from error
    rotary_dim = config.rotary_dim
    if (
        not isinstance(rotary_dim, int)
        or rotary_dim < 2
        or rotary_dim % 2
        or rotary_dim > head_dim
    ):
        raise ValueError(
            f"model.rotary_dim={rotary_dim!r} is invalid for head dim {head_dim}. "
            f"Use an even int from 2 to {head_dim}, or None to use "
            "model.rotary_fraction."
        )
    return rotary_dim


def scaled_frequencies(
    config: ModelConfig, rotary_dim: int, positions: Array | None
) -> tuple[Array, float]:
    """Compute the frequencies of the `rope` encoding after `model.rope_scaling`.

    Args:
      config: reads rotary_base, rope_scaling and the rescaling's options.
      rotary_dim: d, the rotated width.
      positions: ``[B, S]`` key positions. Only `dynamic_ntk` reads them, for
        the length ``max(positions) + 1``, and the other rescalings accept None.

    Returns:
      ``[d // 2] float32`` frequencies, and the factor that queries and keys
      are multiplied by: YaRN's ``0.1 * ln(s) + 1``, else 1.
    """
    scaling = config.rope_scaling
    factor = config.rope_scaling_factor
    original_length = config.rope_original_max_length
    base = config.rotary_base
    frequencies = rotary.rotary_frequencies(rotary_dim, base)

    if scaling == "linear":
        frequencies = rope_scaling.linear_frequencies(frequencies, factor)
    elif scaling == "ntk":
        scaled_base = rope_scaling.ntk_base(base, factor, rotary_dim)
        frequencies = rotary.rotary_frequencies(rotary_dim, scaled_base)
    elif scaling == "dynamic_ntk":
        length = rope_scaling.sequence_length(positions)
        scaled_base = rope_scaling.dynamic_ntk_base(
            base, factor, rotary_dim, original_length, length
        )
        frequencies = rotary.rotary_frequencies(rotary_dim, scaled_base)
    elif scaling == "yarn":
        frequencies = rope_scaling.yarn_frequencies(
            frequencies,
            factor,
            original_length,
            config.yarn_beta_fast,
            config.yarn_beta_slow,
        )
        return frequencies, rope_scaling.yarn_attention_scale(factor)
    elif scaling == "llama3":
        frequencies = rope_scaling.llama3_frequencies(
            frequencies,
            factor,
            original_length,
            config.llama3_low_freq_factor,
            config.llama3_high_freq_factor,
        )
    return frequencies, 1.0


def rotate(x: Array, angles: Array, layout: str, scale: float = 1.0) -> Array:
    """Rotate x by angles, multiply by scale in float32, and cast back to x's dtype."""
    if scale == 1.0:
        return rotary.apply_rotary_angles(x, angles, layout=layout)
    rotated = rotary.apply_rotary_angles(x.astype(jnp.float32), angles, layout=layout)
    return (rotated * scale).astype(x.dtype)


def rotate_qkv(
    config: ModelConfig,
    q: Array,
    k: Array,
    v: Array,
    q_angles: Array,
    k_angles: Array,
    scale: float = 1.0,
) -> tuple[Array, Array, Array, None]:
    """Rotate queries and keys (and values if `rotary_value`) by their angles.

    scale multiplies queries and keys, never values.
    """
    layout = config.rotary_layout
    q = rotate(q, q_angles, layout, scale)
    k = rotate(k, k_angles, layout, scale)
    if config.rotary_value:
        v = rotate(v, k_angles, layout)
    return q, k, v, None


@register("rope")
class RotaryEncoding(PositionEncoding):
    """RoPE, with the context-extension rescaling chosen by `rope_scaling`.

    The rescalings are in `roformer_jax.rope_scaling`. Frequencies are
    recomputed in float32 on each call and nothing is stored as a parameter.
    `dynamic_ntk` takes its length from the largest key position in the batch.
    `yarn` multiplies whole query and key heads, rotated features and any
    others, by ``sqrt(1 / t) = 0.1 * ln(s) + 1``, so every logit is divided by
    the temperature t exactly.

    NOTE: Hugging Face Transformers applies YaRN's factor through the cosine
    and sine, so with partial rotary it scales only the rotated features.
    """

    def transform(self, q, k, v, q_positions, k_positions):
        config = self.config
        validate_rope_options(config)
        rotary_dim = resolve_rotary_dim(config)
        frequencies, scale = scaled_frequencies(config, rotary_dim, k_positions)
        q_angles = rotary.angles_from_frequencies(q_positions, frequencies)
        k_angles = rotary.angles_from_frequencies(k_positions, frequencies)
        return rotate_qkv(config, q, k, v, q_angles, k_angles, scale)


@register("rope_learned")
class LearnedRotaryEncoding(PositionEncoding):
    """RoPE with trainable frequencies, initialised at ``base ** (-2i/d)``.

    Each attention layer stores float32 ``log_frequencies``: one ``[d // 2]``
    set shared by all heads (logical axes ``(None,)``), or with
    `rotary_learned_per_head` one ``[N, d // 2]`` set per head (logical axes
    ``("heads", None)``). Storing logarithms keeps every frequency positive.
    The parameter stays float32 and the angles are computed in float32 under
    a bfloat16 compute dtype. A query and a key still rotate by the same
    frequencies, so the encoding stays relative. `rope_scaling` does not
    apply.
    """

    @nn.compact
    def transform(self, q, k, v, q_positions, k_positions):
        config = self.config
        validate_rope_options(config)
        rotary_dim = resolve_rotary_dim(config)
        if config.rotary_learned_per_head:
            shape, axes = (config.num_heads, rotary_dim // 2), ("heads", None)
        else:
            shape, axes = (rotary_dim // 2,), (None,)

        def init(key, shape, dtype=jnp.float32):
            del key
            initial = jnp.log(rotary.rotary_frequencies(rotary_dim, config.rotary_base))
            return jnp.broadcast_to(initial, shape).astype(dtype)

        log_frequencies = self.param(
            "log_frequencies",
            nn.with_logical_partitioning(init, axes),
            shape,
            jnp.float32,
        )
        frequencies = jnp.exp(log_frequencies.astype(jnp.float32))
        q_angles = rotary.angles_from_frequencies(q_positions, frequencies)
        k_angles = rotary.angles_from_frequencies(k_positions, frequencies)
        return rotate_qkv(config, q, k, v, q_angles, k_angles)


def axial_angles(
    positions: Array, rotary_dim: int, base: float, grid_width: int
) -> Array:
    """Compute 2-D axial RoPE angles of patches numbered row by row.

    Patch p sits at ``(row, col) = divmod(p, grid_width)``. The first
    ``rotary_dim // 4`` pairs rotate by the row and the last ``rotary_dim // 4``
    by the column, each half with the frequencies ``base ** (-2i / (d/2))``
    over its own width d/2.

    Args:
      positions: ``[B, T]`` integer patch numbers.
      rotary_dim: d, a multiple of 4.
      base: wavelength base.
      grid_width: patches per row of the image grid.

    Returns:
      ``[B, T, d // 2] float32`` angles, row angles first.
    """
    frequencies = rotary.rotary_frequencies(rotary_dim // 2, base)  # [d/4]
    rows = positions // grid_width
    cols = positions % grid_width
    row_angles = rotary.angles_from_frequencies(rows, frequencies)
    col_angles = rotary.angles_from_frequencies(cols, frequencies)
    return jnp.concatenate([row_angles, col_angles], axis=-1)


@register("rope_2d")
class AxialRotaryEncoding(PositionEncoding):
    """2-D axial RoPE for image patches on a grid `rotary_grid_width` wide.

    Half of the rotated pairs encode the patch row and half the column
    (`axial_angles`), so ``q . k`` depends on the row offset and the column
    offset only. Which features form a pair follows `rotary_layout`. On 1-D
    token positions the encoding treats positions as patch numbers.
    `rope_scaling` does not apply.
    """

    def transform(self, q, k, v, q_positions, k_positions):
        config = self.config
        validate_rope_options(config)
        rotary_dim = resolve_rotary_dim(config)
        base, width = config.rotary_base, config.rotary_grid_width
        q_angles = axial_angles(q_positions, rotary_dim, base, width)
        k_angles = axial_angles(k_positions, rotary_dim, base, width)
        return rotate_qkv(config, q, k, v, q_angles, k_angles)
