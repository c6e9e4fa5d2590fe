"""The loss shared by the language-model and classification tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from roformer_jax.train.tasks import weighted_cross_entropy


def _float64_reference(logits, targets, weights):
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    losses = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    correct = (logits.argmax(-1) == targets).astype(np.float64)
    return (losses * weights).sum(), (correct * weights).sum(), weights.sum()


def _batch(seed: int, vocab: int = 37):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(3, 5, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(3, 5)).astype(np.int32)
    # Make some predictions right, so the count is not trivially zero.
    targets[:, :2] = logits[:, :2].argmax(-1)
    weights = rng.integers(0, 2, size=(3, 5)).astype(np.float32)
    return logits, targets, weights


def test_sums_match_float64():
    logits, targets, weights = _batch(0)

    sums = jax.jit(weighted_cross_entropy)(logits, targets, weights)

    loss, correct, weight = _float64_reference(logits, targets, weights)
    np.testing.assert_allclose(float(sums["loss_sum"]), loss, rtol=1e-6)
    assert float(sums["correct_sum"]) == correct
    assert float(sums["weight_sum"]) == weight


def test_gradient_matches_optax():
    logits, targets, weights = _batch(1)

    def ours(x):
        return weighted_cross_entropy(x, targets, weights)["loss_sum"]

    def reference(x):
        losses = optax.softmax_cross_entropy_with_integer_labels(x, targets)
        return jnp.sum(losses * weights)

    np.testing.assert_allclose(
        jax.grad(ours)(logits), jax.grad(reference)(logits), atol=1e-6
    )


def test_bfloat16_logits_use_float32_loss():
    logits, targets, weights = _batch(2)

    sums = weighted_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets, weights)

    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    loss, _, _ = _float64_reference(rounded, targets, weights)
    assert sums["loss_sum"].dtype == jnp.float32
    np.testing.assert_allclose(float(sums["loss_sum"]), loss, rtol=1e-6)
