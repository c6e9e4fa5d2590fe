"""Benchmark 6: time to compile the first training step.

For configs A and B (dropout 0.1), a worker per implementation traces,
lowers and compiles the train step once per repetition. JAX's caches are
cleared before each run and the persistent compilation cache is off, so
each run does the work of a first step in a fresh process. Ours is `make_steps`'
train step, rebuilt each time; transformers' Flax RoFormer step is the one
the training benchmark times. The first run of each worker also pays for
one-time imports and JAX's own warm-up, so it is reported apart as "cold".
PyTorch runs eagerly and has no compile step.
"""

import logging

from benchmarks import harness, shapes

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("roformer_jax", "hf_flax")
DROPOUT = 0.1


def run(settings: harness.Settings) -> list[dict]:
    rows = []
    for shape in shapes.training_shapes(settings.quick):
        logger.info("First-step compile, config %s:", shape.name)
        with (
            harness.Worker(settings.cpus, f"compile ours {shape.name}") as ours_worker,
            harness.Worker(settings.cpus, f"compile flax {shape.name}") as flax_worker,
        ):
            ours = harness.start_session(
                ours_worker,
                "jax_sessions",
                "OursCompile",
                shape=shape.to_dict(),
                dropout=DROPOUT,
            )
            flax = harness.start_session(
                flax_worker,
                "jax_sessions",
                "HfFlaxCompile",
                shape=shape.to_dict(),
                hf_config=ours["info"]["hf_config"],
            )
            replies = harness.measure_alternating(
                {
                    "roformer_jax": (ours_worker, ours["session"]),
                    "hf_flax": (flax_worker, flax["session"]),
                },
                warmup=0,
                repeats=settings.repeats + 1,
            )
        rows.append(summarize_compile(shape, replies))
    return rows


def summarize_compile(shape: shapes.ModelShape, replies: dict) -> dict:
    """Split each implementation's runs into the cold first one and the rest."""
    implementations = {}
    for name in IMPLEMENTATIONS:
        runs = replies[name]
        warm = runs[1:]
        implementations[name] = {
            "cold_seconds": float(runs[0]["seconds"]),
            "seconds": harness.summarize(harness.seconds_of(warm)),
            "trace_seconds": harness.summarize([r["trace_seconds"] for r in warm]),
            "xla_seconds": harness.summarize([r["xla_seconds"] for r in warm]),
        }
    return {
        "config": shape.name,
        "shape": shape.to_dict(),
        "implementations": implementations,
    }
