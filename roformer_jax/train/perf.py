"""Model FLOPs and the machine's measured matmul peak, for MFU."""

import statistics
import time

import jax
import jax.numpy as jnp


def model_flops_per_step(
    *, num_params: int, num_layers: int, hidden_size: int, seq_len: int, batch_size: int
) -> float:
    """Training FLOPs per step: 6 N tokens for the weights plus 12 L D T^2 B
    for the attention scores and weighted sums (forward and backward)."""
    tokens = seq_len * batch_size
    return (
        6.0 * num_params * tokens
        + 12.0 * num_layers * hidden_size * seq_len**2 * batch_size
    )


def measure_matmul_peak(
    *, size: int = 2048, repeats: int = 10, dtype=jnp.float32, device=None
) -> float:
    """Return the median FLOP/s of a `size x size` matmul on one device.

    The median of `repeats` timed calls, after one compile-and-warm-up call.
    The median rather than the best, because on shared CPUs single calls
    vary by a factor of three or more.
    """
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    b = jax.device_put(jnp.ones((size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(seconds)
