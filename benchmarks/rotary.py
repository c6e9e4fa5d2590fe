"""Benchmark 4: the rotary application alone, and its cost inside our step.

Standalone, on float32 queries and keys of `[B, T, N, H] = [8, 2048, 8, 64]`
each: our `roformer_jax.rotary.apply_rotary`, transformers' Flax
`FlaxRoFormerSelfAttention.apply_rotary_position_embeddings` and its
PyTorch `RoFormerSelfAttention.apply_rotary_position_embeddings` (on the
same tensors laid out `[B, N, T, H]`). Each call rotates q and k.

Bytes moved per call = read q and k + write q and k = 4 x B T N H x 4
bytes. The position inputs are not counted. Ours reads `[B, T]` int32
positions and computes sine and cosine, and transformers reads a `[T, H]`
float32 table. Both are under 1% of the q and k bytes at this size. The
reference is the copy rate over the same bytes: a JAX multiply of q and k by
a runtime scalar, run in the same repetitions.

Inside the model: our config A train step (dropout off) runs with and
without RoPE, in turns, which gives what the rotation costs there. The
optimized HLO of the step shows whether XLA made the rotation a pass of its
own over q and k (`rotary_fusion_report`).
"""

import logging
import math
import re

from benchmarks import harness, shapes

logger = logging.getLogger(__name__)

SHAPE = (8, 2048, 8, 64)
QUICK_SHAPE = (2, 64, 2, 16)
IMPLEMENTATIONS = ("roformer_jax", "hf_flax", "hf_torch")
COPY_NAME = "copy"

# Op names of the position encoding inside our attention layers, as the
# optimized HLO's metadata records them.
ROTARY_OP_PATTERN = re.compile(r"/position\.transform/")


def bytes_moved(shape) -> int:
    """Read and write q and k once each, float32."""
    return 4 * math.prod(shape) * 4


def run(settings: harness.Settings) -> dict:
    shape = list(QUICK_SHAPE if settings.quick else SHAPE)
    logger.info("Rotary application on q and k of [B, T, N, H] = %s:", shape)
    with (
        harness.Worker(settings.cpus, "jax rotary") as jax_worker,
        harness.Worker(settings.cpus, "torch rotary") as torch_worker,
    ):
        starts = {
            "roformer_jax": harness.start_session(
                jax_worker, "jax_sessions", "OursRotary", shape=shape
            ),
            "hf_flax": harness.start_session(
                jax_worker, "jax_sessions", "HfFlaxRotary", shape=shape
            ),
            "hf_torch": harness.start_session(
                torch_worker, "torch_sessions", "TorchRotary", shape=shape
            ),
            COPY_NAME: harness.start_session(
                jax_worker, "jax_sessions", "Copy", shapes_list=[shape, shape]
            ),
        }
        workers = {name: jax_worker for name in starts}
        workers["hf_torch"] = torch_worker
        replies = harness.measure_alternating(
            {name: (workers[name], start["session"]) for name, start in starts.items()},
            warmup=settings.warmup,
            repeats=settings.repeats,
        )
    result = summarize_rotary(shape, replies)
    result["in_model"] = run_in_model(settings)
    return result


def summarize_rotary(shape, replies: dict) -> dict:
    """Turn the timed runs into bytes/s and the per-repetition fraction of
    the copy rate over the same bytes."""
    moved = bytes_moved(shape)
    copy_seconds = harness.seconds_of(replies[COPY_NAME])
    result = {
        "shape": list(shape),
        "bytes_per_call": moved,
        "copy": {
            "seconds": harness.summarize(copy_seconds),
            "bytes_per_second": harness.summarize([moved / s for s in copy_seconds]),
        },
        "implementations": {},
    }
    for name in IMPLEMENTATIONS:
        seconds = harness.seconds_of(replies[name])
        result["implementations"][name] = {
            "seconds": harness.summarize(seconds),
            "bytes_per_second": harness.summarize([moved / s for s in seconds]),
            # Same bytes, so the bandwidth ratio is the inverse time ratio.
            "copy_fraction": harness.summarize(
                harness.pair_ratios(copy_seconds, seconds)
            ),
        }
    return result


def run_in_model(settings: harness.Settings) -> dict:
    """Time our config A train step with and without RoPE, in turns."""
    shape = shapes.training_shapes(settings.quick)[0]
    logger.info("RoPE inside our config %s train step:", shape.name)
    with harness.Worker(settings.cpus, "rope in model") as worker:
        starts = {
            variant: harness.start_session(
                worker,
                "jax_sessions",
                "OursLanguageModel",
                shape=shape.to_dict(),
                dropout=0.0,
                mode="train",
                variant=variant,
            )
            for variant in ("full", "no_rope")
        }
        replies = harness.measure_alternating(
            {variant: (worker, start["session"]) for variant, start in starts.items()},
            warmup=settings.warmup,
            repeats=settings.repeats,
        )
    with_rope = harness.seconds_of(replies["full"])
    without = harness.seconds_of(replies["no_rope"])
    head_dim = shape.hidden_size // shape.num_heads
    # Forward and backward each pass over q and k (or their gradients) once.
    qk_bytes = 2 * bytes_moved(
        (shape.batch_size, shape.seq_len, shape.num_heads, head_dim)
    )
    return {
        "config": shape.name,
        "with_rope": harness.summarize(with_rope),
        "without_rope": harness.summarize(without),
        "rope_seconds": harness.summarize(
            [a - b for a, b in zip(with_rope, without, strict=True)]
        ),
        "rope_share": harness.summarize(
            [(a - b) / a for a, b in zip(with_rope, without, strict=True)]
        ),
        "separate_pass_bytes": qk_bytes * shape.num_layers,
        "rotary_fusions": starts["full"]["info"].get("rotary_fusions"),
    }


def rotary_fusion_report(hlo_text: str, qk_elements: int) -> dict:
    """Count the fusions of an optimized HLO module that rotate, and which
    of them are passes of their own over q or k.

    A fusion rotates when it contains an op of the position encoding
    (`ROTARY_OP_PATTERN`, matched on the op names that JAX records in the
    metadata). It is a pass of its own when all its named ops belong to the
    position encoding and it writes an array of rank 3 or more with at least
    `qk_elements` (B T N H) elements. Such a fusion reads q or k (or their
    gradients) only to rotate them. Sine and cosine tables and weight gradients are
    smaller or of rank 2, and rotations fused with other work of the layer
    (the projection, the attention's matmul or its transposes) hold ops of
    other names. This is a heuristic on names and shapes; a module without
    such names gives zero counts, which the page reports as "not identified".
    """
    rotary = with_other_ops = own_passes = 0
    for computation in re.split(r"\n(?=\S)", hlo_text):
        header = computation.split("\n", 1)[0]
        if not header.startswith("%fused"):
            continue
        names = re.findall(r'op_name="([^"]*)"', computation)
        rotary_names = [name for name in names if ROTARY_OP_PATTERN.search(name)]
        if not rotary_names:
            continue
        rotary += 1
        if len(rotary_names) < len(names):
            with_other_ops += 1
        elif _largest_output(header, min_rank=3) >= qk_elements:
            own_passes += 1
    return {
        "rotary_fusions": rotary,
        "with_other_ops": with_other_ops,
        "own_passes": own_passes,
    }


def _largest_output(header: str, *, min_rank: int) -> int:
    """Return the element count of the largest output array of at least
    `min_rank` dimensions in a computation's header (0 if there is none)."""
    _, _, outputs = header.partition("->")
    largest = 0
    for dims in re.findall(r"\w+\[([\d,]*)\]", outputs):
        sizes = [int(size) for size in dims.split(",") if size]
        if len(sizes) >= min_rank:
            largest = max(largest, math.prod(sizes))
    return largest
