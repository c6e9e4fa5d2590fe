"""Benchmark 1: the machine's peaks, which every utilisation figure divides by.

- Matmul throughput: one `n x n` matmul per run, 2 n^3 FLOPs, in JAX for
  float32 and bfloat16, and in torch for float32 as a cross-check.
- Copy bandwidth: JAX multiplies a float32 array by a runtime scalar, so
  each byte is read once and written once; bytes per run = 2 x array size.

A JAX worker and a torch worker take turns, one run each per repetition.
"""

import logging

from benchmarks import harness

logger = logging.getLogger(__name__)

MATMUL_SIZE = 2048
QUICK_MATMUL_SIZE = 256
COPY_BYTES = 256 * 2**20  # Far above the last-level cache of common CPUs.
QUICK_COPY_BYTES = 4 * 2**20


def run(settings: harness.Settings) -> dict:
    size = QUICK_MATMUL_SIZE if settings.quick else MATMUL_SIZE
    copy_bytes = QUICK_COPY_BYTES if settings.quick else COPY_BYTES
    logger.info("Peaks: %dx%d matmul, copy of %d MiB.", size, size, copy_bytes >> 20)
    with (
        harness.Worker(settings.cpus, "jax peaks") as jax_worker,
        harness.Worker(settings.cpus, "torch peaks") as torch_worker,
    ):
        starts = {
            "jax_float32": harness.start_session(
                jax_worker, "jax_sessions", "Matmul", size=size, dtype="float32"
            ),
            "jax_bfloat16": harness.start_session(
                jax_worker, "jax_sessions", "Matmul", size=size, dtype="bfloat16"
            ),
            "torch_float32": harness.start_session(
                torch_worker, "torch_sessions", "TorchMatmul", size=size
            ),
            "jax_copy": harness.start_session(
                jax_worker, "jax_sessions", "Copy", shapes_list=[[copy_bytes // 4]]
            ),
        }
        workers = {
            "jax_float32": jax_worker,
            "jax_bfloat16": jax_worker,
            "torch_float32": torch_worker,
            "jax_copy": jax_worker,
        }
        replies = harness.measure_alternating(
            {name: (workers[name], start["session"]) for name, start in starts.items()},
            warmup=settings.warmup,
            repeats=settings.repeats,
        )
    return summarize_peaks(
        size, {name: start["info"] for name, start in starts.items()}, replies
    )


def summarize_peaks(size: int, infos: dict, replies: dict) -> dict:
    """Turn the timed runs into FLOP/s and bytes/s summaries."""
    matmul = {}
    for name in ("jax_float32", "jax_bfloat16", "torch_float32"):
        seconds = harness.seconds_of(replies[name])
        flops = infos[name]["flops_per_run"]
        matmul[name] = {
            "size": size,
            "seconds": harness.summarize(seconds),
            "flops_per_second": harness.summarize([flops / s for s in seconds]),
        }
    copy_seconds = harness.seconds_of(replies["jax_copy"])
    copy_bytes = infos["jax_copy"]["bytes_per_run"]
    return {
        "matmul": matmul,
        "copy": {
            "bytes_per_run": copy_bytes,
            "seconds": harness.summarize(copy_seconds),
            "bytes_per_second": harness.summarize(
                [copy_bytes / s for s in copy_seconds]
            ),
        },
    }


def float32_peak(peaks: dict) -> float:
    """Return the median JAX float32 matmul rate, the MFU denominator."""
    return peaks["matmul"]["jax_float32"]["flops_per_second"]["median"]


def copy_bandwidth(peaks: dict) -> float:
    return peaks["copy"]["bytes_per_second"]["median"]
