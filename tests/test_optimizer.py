"""Tests of the learning-rate schedule, weight-decay mask and FLOP count."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from roformer_jax.train import optimizer, perf


def optim_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            warmup_steps=10,
            decay="cosine",
            end_learning_rate_ratio=0.1,
            weight_decay=0.1,
            beta1=0.9,
            beta2=0.99,
            epsilon=1e-8,
            grad_clip_norm=1.0,
        )
    )
    config.update(overrides)
    return config


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warmup_peak_and_end(decay):
    schedule = optimizer.learning_rate_schedule(optim_config(decay=decay), 110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-4)
    assert float(schedule(60)) < 1e-3


def test_cosine_midpoint():
    schedule = optimizer.learning_rate_schedule(optim_config(), 110)
    # Halfway through the decay the cosine is at the mean of peak and end.
    assert float(schedule(60)) == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-5)


def test_weight_decay_mask_skips_biases_and_norms():
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "layer_norm": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        "embed": {"embedding": jnp.ones((3, 2))},
    }
    mask = optimizer.weight_decay_mask(params)
    assert mask["dense"]["kernel"]
    assert mask["embed"]["embedding"]
    assert not mask["dense"]["bias"]
    assert not mask["layer_norm"]["scale"]
    assert not mask["layer_norm"]["bias"]


def test_masked_parameters_do_not_decay():
    """With zero gradients only weight decay moves parameters."""
    tx, _ = optimizer.make_optimizer(optim_config(warmup_steps=0), 10)
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["dense"]["kernel"]) < 1.0)
    np.testing.assert_array_equal(new["dense"]["bias"], params["dense"]["bias"])


def test_gradient_clipping_bounds_update():
    tx, _ = optimizer.make_optimizer(
        optim_config(warmup_steps=0, weight_decay=0.0, grad_clip_norm=1.0), 10
    )
    params = {"w": jnp.zeros(4)}
    huge = {"w": jnp.full(4, 1e6)}
    small = {"w": jnp.full(4, 0.5)}  # Global norm exactly 1: unchanged by clipping.
    state = tx.init(params)
    huge_update, _ = tx.update(huge, state, params)
    small_update, _ = tx.update(small, state, params)
    np.testing.assert_allclose(huge_update["w"], small_update["w"], rtol=1e-6)


def test_invalid_decay_rejected():
    with pytest.raises(ValueError, match="optim.decay='step' is invalid"):
        optimizer.learning_rate_schedule(optim_config(decay="step"), 10)


def test_model_flops_formula():
    flops = perf.model_flops_per_step(
        num_params=1000, num_layers=2, hidden_size=8, seq_len=4, batch_size=3
    )
    assert flops == 6 * 1000 * 12 + 12 * 2 * 8 * 16 * 3


def test_matmul_peak_positive():
    assert perf.measure_matmul_peak(size=64, repeats=3) > 0
