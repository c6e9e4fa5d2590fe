"""Benchmarks 2 and 3: masked-LM training steps and inference, roformer_jax
against transformers' Flax and PyTorch RoFormer, and the profile by removal.

Each scenario (config, training or inference, dropout rate) starts a fresh
worker per implementation, plus one that times a float32 matmul. They take
turns, one step each per repetition (`harness.measure_alternating`), so
every ratio below pairs runs of the same repetition.

- Training: one optimizer step on one fixed batch (`shapes.masked_lm_batch`).
  Ours is `make_steps`' train step; Flax RoFormer gets the same Optax chain
  in a jitted step; PyTorch RoFormer runs forward, backward, gradient
  clipping and fused `torch.optim.AdamW`.
- Inference: one forward pass to the `[B, T, V]` logits, without dropout.
- Dropout: 0.1 for hidden states and attention weights in all three (the
  transformers default), and 0 for all three.
- Memory: each worker's peak RSS (`getrusage`), also less the RSS it had
  after importing its libraries, and for the JAX programs XLA's own
  accounting of the compiled step (`compiled.memory_analysis()`).
"""

import logging

from benchmarks import harness, shapes

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("roformer_jax", "hf_flax", "hf_torch")
OTHERS = ("hf_flax", "hf_torch")
DROPOUT_RATES = (0.1, 0.0)
MATMUL_NAME = "matmul_float32"
PROFILE_VARIANTS = (
    "full",
    "gathered_head",
    "no_rope",
    "gradients_only",
    "forward_only",
)


def _start_implementations(settings, workers, shape, mode, dropout) -> dict:
    ours = harness.start_session(
        workers["roformer_jax"],
        "jax_sessions",
        "OursLanguageModel",
        shape=shape.to_dict(),
        dropout=dropout,
        mode=mode,
    )
    hf_config = ours["info"]["hf_config"]
    starts = {"roformer_jax": ours}
    starts["hf_flax"] = harness.start_session(
        workers["hf_flax"],
        "jax_sessions",
        "HfFlaxLanguageModel",
        shape=shape.to_dict(),
        hf_config=hf_config,
        mode=mode,
    )
    starts["hf_torch"] = harness.start_session(
        workers["hf_torch"],
        "torch_sessions",
        "TorchLanguageModel",
        shape=shape.to_dict(),
        hf_config=hf_config,
        optimizer=ours["info"]["optimizer"],
        mode=mode,
    )
    return starts


def run_scenario(
    settings: harness.Settings, shape: shapes.ModelShape, mode: str, dropout: float
) -> dict:
    """Measure the three implementations on one config, mode and dropout."""
    logger.info(
        "%s, config %s (%s), dropout %g:",
        "Training" if mode == "train" else "Inference",
        shape.name,
        shape.describe(),
        dropout,
    )
    names = (*IMPLEMENTATIONS, MATMUL_NAME)
    workers = {
        name: harness.Worker(settings.cpus, f"{name} {shape.name}") for name in names
    }
    try:
        starts = _start_implementations(settings, workers, shape, mode, dropout)
        starts[MATMUL_NAME] = harness.start_session(
            workers[MATMUL_NAME],
            "jax_sessions",
            "Matmul",
            size=256 if settings.quick else 2048,
            dtype="float32",
        )
        replies = harness.measure_alternating(
            {name: (workers[name], starts[name]["session"]) for name in names},
            warmup=settings.warmup,
            repeats=settings.repeats,
        )
        memory = {
            name: harness.worker_memory(workers[name]) for name in IMPLEMENTATIONS
        }
    finally:
        for worker in workers.values():
            worker.close()
    infos = {name: starts[name]["info"] for name in names}
    return summarize_scenario(shape, mode, dropout, infos, replies, memory)


def summarize_scenario(
    shape: shapes.ModelShape,
    mode: str,
    dropout: float,
    infos: dict,
    replies: dict,
    memory: dict,
) -> dict:
    """Turn one scenario's timed runs into throughput, MFU and ratios.

    FLOPs per step are ours (`info["flops_per_step"]`, from our parameter
    count) for all three, because they run the same model. Speedups are
    other time / our time per repetition; `matmul_fraction` is achieved
    FLOP/s / matmul FLOP/s per repetition.
    """
    tokens = shape.tokens_per_step
    flops = infos["roformer_jax"]["flops_per_step"]
    matmul_seconds = harness.seconds_of(replies[MATMUL_NAME])
    matmul_rates = [infos[MATMUL_NAME]["flops_per_run"] / s for s in matmul_seconds]
    seconds = {name: harness.seconds_of(replies[name]) for name in IMPLEMENTATIONS}
    implementations = {}
    for name in IMPLEMENTATIONS:
        achieved = [flops / s for s in seconds[name]]
        info = {key: value for key, value in infos[name].items() if key != "hf_config"}
        implementations[name] = {
            "seconds": harness.summarize(seconds[name]),
            "tokens_per_second": harness.summarize([tokens / s for s in seconds[name]]),
            "flops_per_second": harness.summarize(achieved),
            "matmul_fraction": harness.summarize(
                harness.pair_ratios(achieved, matmul_rates)
            ),
            "memory": memory.get(name, {}),
            "info": info,
        }
    ratios = {
        f"speedup_vs_{other}": harness.summarize(
            harness.pair_ratios(seconds[other], seconds["roformer_jax"])
        )
        for other in OTHERS
    }
    ratios["speedup_vs_fastest_hf"] = harness.summarize(
        harness.speedups_over_fastest(
            seconds["roformer_jax"], {other: seconds[other] for other in OTHERS}
        )
    )
    return {
        "config": shape.name,
        "shape": shape.to_dict(),
        "mode": mode,
        "dropout": dropout,
        "tokens_per_step": tokens,
        "flops_per_step": flops,
        "matmul_size": infos[MATMUL_NAME]["size"],
        "matmul_flops_per_second": harness.summarize(matmul_rates),
        "implementations": implementations,
        "ratios": ratios,
        "hf_config": infos["roformer_jax"].get("hf_config"),
    }


def run_training(settings: harness.Settings) -> list[dict]:
    return [
        run_scenario(settings, shape, "train", dropout)
        for shape in shapes.training_shapes(settings.quick)
        for dropout in DROPOUT_RATES
    ]


def run_inference(settings: harness.Settings) -> list[dict]:
    return [
        run_scenario(settings, shape, "infer", DROPOUT_RATES[0])
        for shape in shapes.training_shapes(settings.quick)
    ]


def run_profile(
    settings: harness.Settings, shape: shapes.ModelShape, dropout: float
) -> dict:
    """Time our train step with one part removed at a time.

    Every variant is compiled in one worker and they take turns. The share
    of a part is (full - variant) / full, per repetition. XLA's cost
    estimate of the full step (FLOPs, bytes accessed) comes with it.
    """
    logger.info("Profile by removal, config %s, dropout %g:", shape.name, dropout)
    with harness.Worker(settings.cpus, f"profile {shape.name}") as worker:
        starts = {
            variant: harness.start_session(
                worker,
                "jax_sessions",
                "OursLanguageModel",
                shape=shape.to_dict(),
                dropout=dropout,
                mode="train",
                variant=variant,
            )
            for variant in PROFILE_VARIANTS
        }
        replies = harness.measure_alternating(
            {variant: (worker, start["session"]) for variant, start in starts.items()},
            warmup=settings.warmup,
            repeats=settings.repeats,
        )
    return summarize_profile(shape, dropout, starts, replies)


def summarize_profile(
    shape: shapes.ModelShape, dropout: float, starts: dict, replies: dict
) -> dict:
    full = harness.seconds_of(replies["full"])
    variants = {}
    for variant in PROFILE_VARIANTS:
        seconds = harness.seconds_of(replies[variant])
        saved = [
            (whole - part) / whole for whole, part in zip(full, seconds, strict=True)
        ]
        variants[variant] = {
            "seconds": harness.summarize(seconds),
            "share_removed": harness.summarize(saved),
        }
    info = starts["full"]["info"]
    return {
        "config": shape.name,
        "dropout": dropout,
        "variants": variants,
        "flops_per_step": info["flops_per_step"],
        "xla_flops": info.get("xla_flops"),
        "xla_bytes_accessed": info.get("xla_bytes_accessed"),
        "xla_transcendentals": info.get("xla_transcendentals"),
        "rotary_fusions": info.get("rotary_fusions"),
    }
