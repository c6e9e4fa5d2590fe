"""Benchmark 5: long context, standard against memory-efficient attention.

Our masked-LM train step (dropout off) on one layer of config A's width
(256 hidden, 4 heads of 64, 1,024 feed-forward, vocabulary 8,000), batch 1,
at T = 1k to 32k, with `attention_impl="xla"` (softmax over the full T x T
scores) and `attention_impl="chunked"` (flash-style, by blocks of keys). One
layer keeps the 32k step to about a minute on two cores; the attention
terms that grow with T are the same per layer.

Peak memory is XLA's accounting of the compiled step
(`compiled.memory_analysis()`: arguments + outputs + temporaries - donated
aliases), which needs only compilation, so every row has it. A row is timed
only when that peak fits in MEMORY_HEADROOM of the memory available then.
Otherwise its note states how much it would need. The growth exponent between two
lengths is log(cost ratio) / log(length ratio): 1 is linear, 2 quadratic.
"""

import dataclasses
import logging
import math

from benchmarks import harness, shapes

logger = logging.getLogger(__name__)

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (64, 128, 256)
IMPLEMENTATIONS = ("xla", "chunked")
MEMORY_HEADROOM = 0.8  # Share of MemAvailable a timed row may need.
BASE_SHAPE = shapes.ModelShape("long", 1, 256, 4, 1024, 8000, 1024, 1)
QUICK_BASE_SHAPE = shapes.ModelShape("long", 1, 32, 2, 64, 128, 64, 1)


def _start(worker, shape, impl) -> tuple[dict, str | None]:
    """Start a session for `impl`; fall back to the model's only softmax path
    for `xla` when ModelConfig has no attention_impl field yet."""
    start = harness.start_session(
        worker,
        "jax_sessions",
        "OursLanguageModel",
        shape=shape.to_dict(),
        dropout=0.0,
        mode="train",
        attention_impl=impl,
    )
    if "skipped" not in start or impl != "xla":
        return start, start.get("skipped")
    note = (
        "ModelConfig has no attention_impl field yet, so this row ran the "
        "model's default softmax attention (XLA, full scores)."
    )
    fallback = harness.start_session(
        worker,
        "jax_sessions",
        "OursLanguageModel",
        shape=shape.to_dict(),
        dropout=0.0,
        mode="train",
    )
    return fallback, note


def run(settings: harness.Settings) -> dict:
    lengths = QUICK_LENGTHS if settings.quick else LENGTHS
    base = QUICK_BASE_SHAPE if settings.quick else BASE_SHAPE
    rows = []
    with (
        harness.Worker(settings.cpus, "long xla") as xla_worker,
        harness.Worker(settings.cpus, "long chunked") as chunked_worker,
    ):
        workers = {"xla": xla_worker, "chunked": chunked_worker}
        for length in lengths:
            shape = dataclasses.replace(base, seq_len=length)
            logger.info("Long context, T=%d:", length)
            starts, notes = {}, {}
            for impl in IMPLEMENTATIONS:
                starts[impl], notes[impl] = _start(workers[impl], shape, impl)
            available = harness.memory_available_bytes()
            runnable = {}
            for impl in IMPLEMENTATIONS:
                start = starts[impl]
                if "session" not in start:
                    continue
                peak = start["info"]["xla_peak_bytes"]
                if available is not None and peak > MEMORY_HEADROOM * available:
                    notes[impl] = (
                        f"not timed: needs {peak / 2**30:.1f} GiB, and "
                        f"{available / 2**30:.1f} GiB were available"
                    )
                    continue
                runnable[impl] = (workers[impl], start["session"])
            replies = {}
            if runnable:
                replies = harness.measure_alternating(
                    runnable, warmup=settings.warmup, repeats=settings.repeats
                )
            for impl in IMPLEMENTATIONS:
                rows.append(
                    _row(shape, impl, starts[impl], replies.get(impl), notes[impl])
                )
                if "session" in starts[impl]:
                    workers[impl].call("stop", session=starts[impl]["session"])
    return {
        "shape": base.to_dict(),
        "rows": rows,
        "growth": {impl: growth_table(rows, impl) for impl in IMPLEMENTATIONS},
    }


def _row(shape, impl, start, replies, note) -> dict:
    row = {"length": shape.seq_len, "impl": impl, "note": note}
    if "session" in start:
        info = start["info"]
        row["xla_peak_bytes"] = info["xla_peak_bytes"]
        row["attention_impl"] = info.get("attention_impl")
        row["compile_seconds"] = info["compile_seconds"]
    if replies:
        seconds = harness.seconds_of(replies)
        row["seconds"] = harness.summarize(seconds)
        row["tokens_per_second"] = harness.summarize(
            [shape.tokens_per_step / s for s in seconds]
        )
    return row


def growth_exponent(
    length_a: int, value_a: float, length_b: int, value_b: float
) -> float:
    """Return log(value_b / value_a) / log(length_b / length_a)."""
    if length_a == length_b or value_a <= 0 or value_b <= 0:
        raise ValueError(
            f"growth_exponent() needs two different lengths and positive values, "
            f"got ({length_a}, {value_a}) and ({length_b}, {value_b})."
        )
    return math.log(value_b / value_a) / math.log(length_b / length_a)


def growth_table(rows: list[dict], impl: str) -> list[dict]:
    """Growth exponents of median time and peak memory between consecutive
    lengths of one implementation (None where a side has no figure)."""
    own = sorted(
        (row for row in rows if row["impl"] == impl), key=lambda r: r["length"]
    )
    table = []
    for previous, row in zip(own, own[1:], strict=False):
        entry = {"from": previous["length"], "to": row["length"]}
        for key, value_of in (
            ("time", lambda r: r.get("seconds", {}).get("median")),
            ("memory", lambda r: r.get("xla_peak_bytes")),
        ):
            a, b = value_of(previous), value_of(row)
            entry[key] = (
                growth_exponent(previous["length"], a, row["length"], b)
                if a and b
                else None
            )
        table.append(entry)
    return table
