"""Context-extension rescalings of the RoPE frequencies, as pure ``jax.numpy``.

Once positions pass the training length L0 (``original_max_length``), a model
trained with RoPE meets angles ``position * theta_i`` outside its training
range. Each rescaling here changes the frequencies ``theta_i = base ** (-2i / d)``
so that a context s times longer (``factor`` s) keeps the angles closer to
the trained range. All of them keep RoPE relative: queries and keys use the same
rescaled frequencies, so ``q_m . k_n`` still depends on m - n only.

The frequency and base functions compute in float32 and accept traced values
under ``jax.jit``. Argument checks run only on Python and numpy numbers,
because a traced value has no value at trace time.

Nothing here imports Flax or other modules of this package.
"""

import math
import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

ROPE_SCALINGS: tuple[str, ...] = (
    "none",
    "linear",
    "ntk",
    "dynamic_ntk",
    "yarn",
    "llama3",
)


def linear_frequencies(frequencies: ArrayLike, factor: float) -> jax.Array:
    """Rescale the frequencies for linear position interpolation.

    Chen et al. 2023, "Extending Context Window of Large Language Models via
    Positional Interpolation" (arXiv:2306.15595), divide every position by s,
    which is the same as ``theta_i' = theta_i / s``.

    Args:
      frequencies: ``[..., rotary_dim // 2]`` frequencies in radians per position.
      factor: s, the context extension factor, positive.

    Returns:
      The rescaled frequencies, float32, of the same shape.
    """
    _check_positive("factor", factor)
    return jnp.asarray(frequencies, jnp.float32) / factor


def ntk_base(base: float, factor: float, rotary_dim: int) -> jax.Array:
    """Compute the NTK-aware base ``base' = base * s ** (d / (d - 2))``.

    The "NTK-aware scaled RoPE" proposal (bloc97 2023, r/LocalLLaMA) raises the
    base rather than dividing positions, so the highest frequency is unchanged
    and the lowest one, ``base' ** (-(d - 2) / d)``, is divided by exactly s.
    Pass the result as the base of `rotary.rotary_frequencies`.

    Args:
      base: the trained wavelength base, positive.
      factor: s, the context extension factor, positive.
      rotary_dim: d, the number of rotated features, an even int of at least 4.

    Returns:
      The rescaled base, a float32 scalar.
    """
    _check_positive("base", base)
    _check_positive("factor", factor)
    exponent = _ntk_exponent(rotary_dim)
    return jnp.asarray(base, jnp.float32) * jnp.power(
        jnp.asarray(factor, jnp.float32), exponent
    )


def dynamic_ntk_base(
    base: float,
    factor: float,
    rotary_dim: int,
    original_max_length: int,
    length: ArrayLike,
) -> jax.Array:
    """Compute the dynamic NTK base for the current sequence length L.

    Dynamic NTK scaling (Emozilla 2023, as Hugging Face Transformers' dynamic
    NTK rotary embeddings implement it) recomputes the NTK base from the
    length being processed:
    ``base' = base * ((s * L / L0) - (s - 1)) ** (d / (d - 2))`` when L > L0,
    and ``base' = base`` when L <= L0. The base grows continuously from
    ``base`` at L = L0, and reaches the static NTK base of `ntk_base` at
    L = s * L0. This function is stateless, whereas Hugging Face Transformers
    keeps the largest base computed so far until L drops below L0.

    Args:
      base: the trained wavelength base, positive.
      factor: s, the context extension factor, positive.
      rotary_dim: d, the number of rotated features, an even int of at least 4.
      original_max_length: L0, the training length, a positive int.
      length: L, an int scalar, may be traced. `sequence_length` computes it
        from positions.

    Returns:
      The base for this length, a float32 scalar.
    """
    _check_positive("base", base)
    _check_positive("factor", factor)
    _check_positive("original_max_length", original_max_length)
    exponent = _ntk_exponent(rotary_dim)
    length = jnp.asarray(length).astype(jnp.float32)
    ratio = factor * length / original_max_length - (factor - 1.0)
    # Below L0 the ratio can drop under 1 or 0, where the power is wrong or NaN,
    # so it is clamped before jnp.where picks the unscaled base there.
    scaled = base * jnp.power(jnp.maximum(ratio, 1.0), exponent)
    return jnp.where(length > original_max_length, scaled, base).astype(jnp.float32)


def sequence_length(positions: ArrayLike) -> jax.Array:
    """Return the dynamic NTK length L, the largest position in the batch plus one.

    Taking the maximum over the whole batch, as Hugging Face Transformers does
    with ``position_ids``, gives every row the same frequencies. Packed
    documents, padding and decoding offsets all count through their positions,
    not through the array length.

    Args:
      positions: ``[B, T]`` integer positions, may be traced.

    Returns:
      An int32 scalar.
    """
    return jnp.max(jnp.asarray(positions)).astype(jnp.int32) + 1


def yarn_frequencies(
    frequencies: ArrayLike,
    factor: float,
    original_max_length: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> jax.Array:
    """Rescale the frequencies by YaRN's "NTK-by-parts" interpolation.

    Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
    Language Models" (arXiv:2309.00071). Frequency theta_i turns
    ``r_i = L0 * theta_i / (2 pi)`` times over the training length L0. With
    the ramp ``gamma(r) = clip((r - beta_slow) / (beta_fast - beta_slow), 0, 1)``,
    ``theta_i' = (1 - gamma(r_i)) * theta_i / s + gamma(r_i) * theta_i``.
    Frequencies that turn more than beta_fast times are kept (extrapolated),
    those that turn fewer than beta_slow times are divided by s (interpolated),
    and those between are blended. The paper calls beta_slow alpha and
    beta_fast beta. Pair this with `yarn_attention_scale`.

    NOTE: this is the paper's ramp, linear in r. The authors' released code and
    Hugging Face Transformers instead ramp linearly over the pair index between
    the rounded-out indices where r equals beta_fast and beta_slow, so their
    blended frequencies differ from these.

    Args:
      frequencies: ``[..., rotary_dim // 2]`` trained frequencies.
      factor: s, the context extension factor, positive.
      original_max_length: L0, the training length, a positive int.
      beta_fast: rotations over L0 above which a frequency is kept.
      beta_slow: rotations over L0 below which a frequency is divided by s;
        less than beta_fast.

    Returns:
      The rescaled frequencies, float32, of the same shape.
    """
    _check_positive("factor", factor)
    _check_positive("original_max_length", original_max_length)
    _check_band("beta_slow", beta_slow, "beta_fast", beta_fast)
    return _blend_by_rotations(
        frequencies, factor, original_max_length, beta_slow, beta_fast
    )


def yarn_attention_scale(factor: float) -> float:
    """Compute YaRN's query and key scale ``sqrt(1 / t) = 0.1 * ln(s) + 1``.

    YaRN (Peng et al. 2023, arXiv:2309.00071) divides the attention logits by
    a temperature t. Multiplying both the queries and the keys by
    ``sqrt(1 / t)`` multiplies every logit ``q . k`` by ``1 / t``, which is
    that division, with no change to the attention code.

    Args:
      factor: s, the context extension factor, at least 1.

    Returns:
      ``sqrt(1 / t)`` as a Python float: 1 at s = 1, about 1.208 at s = 8.
    """
    if factor < 1:
        raise ValueError(
            f"factor={factor} is below 1, where YaRN's temperature is undefined. "
            "Pass a factor of at least 1."
        )
    return 0.1 * math.log(factor) + 1.0


def llama3_frequencies(
    frequencies: ArrayLike,
    factor: float,
    original_max_length: int,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> jax.Array:
    """Rescale the frequencies as Llama 3.1 does (Meta 2024, rope_type "llama3").

    With wavelength ``lambda_i = 2 pi / theta_i``:

    - ``lambda_i < L0 / high_freq_factor``: theta_i is kept.
    - ``lambda_i > L0 / low_freq_factor``: theta_i is divided by s.
    - between: ``theta_i' = (1 - g) * theta_i / s + g * theta_i`` with
      ``g = (L0 / lambda_i - low_freq_factor) / (high_freq_factor - low_freq_factor)``.

    g is 1 at the short band edge and 0 at the long one, so the three pieces
    join continuously. Since ``L0 / lambda_i`` is the number of rotations
    over L0, this is YaRN's ramp with beta_slow = low_freq_factor and
    beta_fast = high_freq_factor, and without YaRN's temperature. This
    function computes it that way.

    Args:
      frequencies: ``[..., rotary_dim // 2]`` trained frequencies.
      factor: s, the context extension factor, positive.
      original_max_length: L0, the training length, a positive int.
      low_freq_factor: sets the long-wavelength band edge ``L0 / low_freq_factor``.
      high_freq_factor: sets the short-wavelength band edge
        ``L0 / high_freq_factor``; greater than low_freq_factor.

    Returns:
      The rescaled frequencies, float32, of the same shape.
    """
    _check_positive("factor", factor)
    _check_positive("original_max_length", original_max_length)
    _check_band(
        "low_freq_factor", low_freq_factor, "high_freq_factor", high_freq_factor
    )
    return _blend_by_rotations(
        frequencies, factor, original_max_length, low_freq_factor, high_freq_factor
    )


def _blend_by_rotations(
    frequencies: ArrayLike,
    factor: float,
    original_max_length: int,
    low_rotations: float,
    high_rotations: float,
) -> jax.Array:
    """Blend theta / s and theta by the ramp over rotations during L0."""
    frequencies = jnp.asarray(frequencies, jnp.float32)
    rotations = frequencies * (original_max_length / (2 * math.pi))
    ramp = (rotations - low_rotations) / (high_rotations - low_rotations)
    ramp = jnp.clip(ramp, 0.0, 1.0)
    return (1.0 - ramp) * (frequencies / factor) + ramp * frequencies


def _ntk_exponent(rotary_dim: int) -> float:
    if not isinstance(rotary_dim, numbers.Integral) or rotary_dim < 4 or rotary_dim % 2:
        raise ValueError(
            f"rotary_dim={rotary_dim!r} is invalid for NTK scaling, whose exponent "
            "d / (d - 2) needs an even d of at least 4. Rotate at least 4 features."
        )
    return rotary_dim / (rotary_dim - 2)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name}={value} is not positive. Pass a positive {name}.")


def _check_band(low_name: str, low: float, high_name: str, high: float) -> None:
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real):
        if not high > low:
            raise ValueError(
                f"{high_name}={high} is not greater than {low_name}={low}, so the "
                f"ramp between them is empty. Pass {high_name} > {low_name}."
            )
