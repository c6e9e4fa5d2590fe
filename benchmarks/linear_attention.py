"""Time and memory of causal linear attention against softmax attention.

  python -m benchmarks.linear_attention [--lengths=1024,4096,16384]

For each length T, one causal attention call over `[1, T, 4, 64]` queries,
keys and values, forward only, float32:

- `softmax`: `jax.nn.dot_product_attention` with `is_causal=True`, which
  materialises the T x T scores on CPU;
- `linear`: FAVOR+ features (M = 64) with RoPE on the features and the
  chunked causal prefix sums of `roformer_jax.attention.linear`.

Time is the median of 5 calls after a warm-up call, with min and max. Peak
memory is XLA's own accounting of the compiled call (arguments, outputs and
temporary buffers, from `memory_analysis()`), so it is exact for the
program rather than sampled from the process. Prints a Markdown table.
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from roformer_jax import rotary
from roformer_jax.attention import linear

HEADS, HEAD_DIM, FEATURES, CHUNK = 4, 64, 64, 128


def softmax_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def linear_attention(q, k, v, projection, positions):
    q_features, k_features = linear.favor_features(q, k, projection)
    rotate = functools.partial(rotary.apply_rotary, base=10000.0)
    return linear.linear_attention(
        q_features,
        k_features,
        v,
        causal=True,
        rotate=rotate,
        q_positions=positions,
        k_positions=positions,
        chunk_size=CHUNK,
    )


def measure(function, args, repeats: int = 5) -> dict:
    compiled = jax.jit(function).lower(*args).compile()
    memory = compiled.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
    )
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "peak_bytes": peak,
    }


def run(lengths) -> list[dict]:
    rows = []
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    projection = linear.favor_projection(keys[3], FEATURES, HEAD_DIM)
    for length in lengths:
        shape = (1, length, HEADS, HEAD_DIM)
        q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
        positions = jnp.arange(length, dtype=jnp.int32)[None]
        for name, function, args in (
            ("softmax", softmax_attention, (q, k, v)),
            ("linear", linear_attention, (q, k, v, projection, positions)),
        ):
            result = measure(function, args)
            result.update(
                name=name, length=length, tokens_per_second=length / result["median"]
            )
            rows.append(result)
            print(
                f"T={length} {name}: {result['median'] * 1e3:.1f} ms, "
                f"{result['peak_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
    return rows


def markdown(rows) -> str:
    lines = [
        "| T | attention | time per call, median (min–max) | tokens/s | peak memory |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['length']:,} | {row['name']} | {row['median'] * 1e3:,.1f} ms "
            f"({row['min'] * 1e3:,.1f}–{row['max'] * 1e3:,.1f}) | "
            f"{row['tokens_per_second']:,.0f} | {row['peak_bytes'] / 2**20:,.1f} MiB |"
        )
    return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["1024", "4096", "16384"], "Sequence lengths T.")


def _main(argv) -> None:
    del argv
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print(markdown(run([int(length) for length in FLAGS.lengths])))


if __name__ == "__main__":
    app.run(_main)
