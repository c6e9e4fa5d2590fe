"""Dropout whose random bits come from a hash of each element's index.

`jax.random.bernoulli` draws its bits with threefry, which XLA's CPU
backend runs as a separate loop over the whole `[B, N, T, S]` attention
weights before dropout can use them. Here the bits of element i are a hash
of (i, key): a few integer multiplies, shifts and xors that XLA fuses into
the multiply that applies the mask, so no array of random bits is written.
The hash is the finalizer of MurmurHash3 (fmix32) applied twice, once per
32-bit word of the key: each bit of the output depends on every bit of the
index and of the key, which is what dropout needs. It is not a
cryptographic generator and is not meant for sampling.

The mask of an element depends only on the key and on the element's index
in the whole array. So it is the same however the array is sharded, and a
resumed run that passes the same key gets the same masks.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / golden ratio, spreads the indices.


def _fmix32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return two uint32 words of a raw (`PRNGKey`) or typed (`key`) key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.ravel(key).astype(jnp.uint32)
    if words.shape[0] < 2:
        raise ValueError(
            f"A dropout key needs at least two 32-bit words, got shape {key.shape}; "
            "pass a key from jax.random.PRNGKey or jax.random.key."
        )
    return words[0], words[-1]


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Return uint32 bits of `shape`: a hash of each element's flat index and
    the key. Indices wrap modulo 2**32 for arrays larger than that."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        position = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = index + position * np.uint32(stride % 2**32)
        stride *= shape[axis]
    first, second = _key_words(key)
    return _fmix32(_fmix32(index * _GOLDEN + first) ^ second)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Return a bool mask of `shape` that is True with probability 1 - rate.

    The probability is exact up to 2**-32: an element is dropped when its
    bits fall below round(rate * 2**32).

    Raises:
      ValueError: rate is not in [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout rate {rate} is invalid; use a value in [0, 1).")
    threshold = np.uint32(min(round(rate * 2**32), 2**32 - 1))
    return hash_bits(key, shape) >= threshold


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Zero each element of x with probability `rate` and scale the rest by
    1 / (1 - rate), so the expectation is unchanged."""
    if rate == 0.0:
        return x
    keep = keep_mask(key, x.shape, rate)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
    """`flax.linen.Dropout` with `keep_mask`'s hashed bits; the key comes
    from the `dropout` RNG stream as in Flax."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))
