"""Hashed dropout masks: drop rate, independence, keys, sharding, scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roformer_jax import dropout


def _binomial_bound(count: int, rate: float, sigmas: float = 5.0) -> float:
    return sigmas * np.sqrt(count * rate * (1.0 - rate))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_fraction_matches_rate(rate):
    shape = (16, 64, 128)
    count = int(np.prod(shape))

    keep = np.asarray(dropout.keep_mask(jax.random.PRNGKey(3), shape, rate))

    dropped = count - int(keep.sum())
    assert abs(dropped - rate * count) <= _binomial_bound(count, rate)


def test_neighbours_are_independent():
    """Pairs of horizontally and vertically adjacent elements fall in the four
    (kept, dropped) cells with the product probabilities (chi-square, 3 dof)."""
    rate = 0.3
    keep = np.asarray(dropout.keep_mask(jax.random.PRNGKey(0), (512, 512), rate))
    for first, second in (
        (keep[:, :-1], keep[:, 1:]),
        (keep[:-1, :], keep[1:, :]),
    ):
        first, second = first.ravel(), second.ravel()
        observed = np.array(
            [
                np.sum(first & second),
                np.sum(first & ~second),
                np.sum(~first & second),
                np.sum(~first & ~second),
            ],
            dtype=np.float64,
        )
        probabilities = np.array(
            [(1 - rate) ** 2, (1 - rate) * rate, rate * (1 - rate), rate**2]
        )
        expected = probabilities * first.size
        chi_square = float(np.sum((observed - expected) ** 2 / expected))
        assert chi_square < 20.0  # p < 0.0002 for 3 degrees of freedom.


def test_mask_per_key():
    shape = (64, 64)
    first = dropout.keep_mask(jax.random.PRNGKey(1), shape, 0.5)
    again = dropout.keep_mask(jax.random.PRNGKey(1), shape, 0.5)
    other = dropout.keep_mask(jax.random.PRNGKey(2), shape, 0.5)
    folded = dropout.keep_mask(jax.random.fold_in(jax.random.PRNGKey(1), 7), shape, 0.5)

    assert np.array_equal(first, again)
    # Two independent masks agree on about half of the elements.
    for different in (other, folded):
        agreement = float(np.mean(np.asarray(first) == np.asarray(different)))
        assert abs(agreement - 0.5) < 0.05


def test_typed_key_equals_raw_key():
    raw = jax.random.PRNGKey(5)
    typed = jax.random.wrap_key_data(raw)

    assert np.array_equal(
        dropout.keep_mask(raw, (8, 8), 0.2), dropout.keep_mask(typed, (8, 8), 0.2)
    )


def test_mask_independent_of_sharding():
    devices = np.asarray(jax.devices()[:8]).reshape(2, 4)
    mesh = Mesh(devices, ("data", "tensor"))
    sharding = NamedSharding(mesh, PartitionSpec("data", None, "tensor"))
    x = jnp.ones((4, 6, 8), jnp.float32)
    key = jax.random.PRNGKey(11)

    expected = dropout.dropout(x, 0.25, key)
    sharded = jax.jit(lambda x: dropout.dropout(x, 0.25, key), out_shardings=sharding)(
        jax.device_put(x, sharding)
    )

    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(expected))


def test_dropout_scales_kept_values():
    x = jnp.arange(1.0, 401.0).reshape(20, 20)
    key = jax.random.PRNGKey(4)

    out = np.asarray(dropout.dropout(x, 0.2, key))

    keep = np.asarray(dropout.keep_mask(key, x.shape, 0.2))
    np.testing.assert_allclose(out[keep], np.asarray(x)[keep] / 0.8, rtol=1e-6)
    assert np.all(out[~keep] == 0.0)


def test_rate_zero_is_identity_and_bad_rate_rejected():
    x = jnp.ones((3, 3))
    assert dropout.dropout(x, 0.0, jax.random.PRNGKey(0)) is x
    with pytest.raises(ValueError, match="rate 1.0 is invalid"):
        dropout.keep_mask(jax.random.PRNGKey(0), (3,), 1.0)


def test_module_uses_the_dropout_stream():
    module = dropout.Dropout(rate=0.5)
    x = jnp.ones((32, 32))
    key = jax.random.PRNGKey(9)

    train = module.apply({}, x, deterministic=False, rngs={"dropout": key})
    evaluate = module.apply({}, x, deterministic=True)

    assert np.array_equal(np.asarray(evaluate), np.asarray(x))
    assert 0 < int(np.sum(np.asarray(train) == 0.0)) < x.size
