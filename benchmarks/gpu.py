"""Tokens/s and MFU of a 125M-parameter causal RoFormer on one accelerator.

  benchmarks/gpu.sh [--quick] [--batch_size=8] [--record]

The model: 12 layers, 768 hidden, 12 heads, 3,072 feed-forward, vocabulary
32,000, pre-LayerNorm, RoPE, no dropout, bfloat16 compute with float32
parameters, attention_impl "auto" (where ModelConfig has that field). One
causal-LM train step of `make_steps` on a fixed `[batch, 2048]` batch is
timed: the median of --steps runs after --warmup runs. MFU = model FLOPs
per step (6 N tokens + 12 L D T^2 B, the trainer's count, which ignores the
causal mask's saving) / step time / the bfloat16 matmul rate measured on the
same device (a 8192^2 matmul, median of 10).

--quick shrinks everything so that it runs on a CPU in seconds, which is
how the tests exercise it. --record writes the result to
docs/benchmarks/gpu.json, where `benchmarks.run_all` picks it up for the
page. It rejects a run that was --quick or not on a GPU.
"""

import dataclasses
import datetime
import json
import logging
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import harness, jax_sessions
from configs import tiny_shakespeare
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train import perf, tasks
from roformer_jax.train.optimizer import make_optimizer
from roformer_jax.train.state import parameter_count, plan_state
from roformer_jax.train.steps import make_steps
from roformer_jax.train.validation import validate_config

logger = logging.getLogger(__name__)

RECORD_PATH = harness.REPO_ROOT / "docs" / "benchmarks" / "gpu.json"


@dataclasses.dataclass(frozen=True)
class GpuShape:
    """The causal model and batch that this benchmark trains."""

    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    vocab_size: int = 32000
    seq_len: int = 2048
    # NOTE: this script has run on CPUs only (--quick). Batch 8 and the 8192^2
    # matmul are sized for a large GPU without having been tried on one.
    batch_size: int = 8
    matmul_size: int = 8192


QUICK_SHAPE = GpuShape(2, 64, 2, 128, 256, 64, 2, 256)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags; only the command itself calls this, so
    that importing the module defines none."""
    flags.DEFINE_bool("quick", False, "Tiny sizes that run on a CPU, for tests.")
    flags.DEFINE_integer("batch_size", None, "Sequences per step. Default 8, quick 2.")
    flags.DEFINE_integer("steps", 10, "Timed train steps.")
    flags.DEFINE_integer("warmup", 3, "Untimed train steps before them.")
    flags.DEFINE_bool("record", False, f"Write the result to {RECORD_PATH}.")


def experiment_config(shape: GpuShape):
    """Return the causal-LM config resized to `shape`, bfloat16 compute."""
    config = tiny_shakespeare.get_config()
    config.model.update(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        mlp_dim=shape.mlp_dim,
        dtype="bfloat16",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    config.data.seq_len = shape.seq_len
    config.data.global_batch_size = shape.batch_size
    config.data.eval_batch_size = shape.batch_size
    config.mesh.update(data=1, fsdp=1, tensor=1)
    if jax_sessions.has_model_field("attention_impl"):
        with config.unlocked():
            config.model.attention_impl = "auto"
    return config


def causal_batch(shape: GpuShape, seed: int = 0) -> dict[str, np.ndarray]:
    """Build one `[B, T]` next-token batch of uniform random tokens."""
    rng = np.random.default_rng(seed)
    size = (shape.batch_size, shape.seq_len + 1)
    tokens = rng.integers(0, shape.vocab_size, size=size, dtype=np.int32)
    positions = np.broadcast_to(
        np.arange(shape.seq_len, dtype=np.int32), (shape.batch_size, shape.seq_len)
    )
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": np.ascontiguousarray(positions),
        "segment_ids": np.ones((shape.batch_size, shape.seq_len), np.int32),
        "weights": np.ones((shape.batch_size, shape.seq_len), np.float32),
    }


def bfloat16_matmul_rate(size: int, repeats: int = 10) -> float:
    """Return the median FLOP/s of a `size x size` bfloat16 matmul."""
    return perf.measure_matmul_peak(size=size, repeats=repeats, dtype=jnp.bfloat16)


def run(shape: GpuShape, *, steps: int, warmup: int) -> dict:
    """Time the train step and measure the matmul rate; return the result."""
    config = experiment_config(shape)
    model_config = validate_config(
        config, device_count=jax.device_count(), vocab_size=shape.vocab_size
    )
    task = tasks.LanguageModelTask("causal_lm")
    model = task.build_model(model_config)
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
    layout = plan_state(
        model,
        tx,
        jax.random.PRNGKey(0),
        mesh,
        mesh_lib.axis_rules(config.mesh),
        seq_len=shape.seq_len,
    )
    train = make_steps(
        task, model, tx, schedule, layout.shardings, mesh, dropout_seed=1
    ).train
    state = layout.initialize()
    batch = jax.device_put(causal_batch(shape), mesh_lib.batch_sharding(mesh))
    num_params = parameter_count(state.params)

    start = time.perf_counter()
    compiled = train.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    seconds = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    matmul_rate = bfloat16_matmul_rate(shape.matmul_size)
    flops = perf.model_flops_per_step(
        num_params=num_params,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        seq_len=shape.seq_len,
        batch_size=shape.batch_size,
    )
    step = statistics.median(seconds)
    tokens = shape.seq_len * shape.batch_size
    device = jax.devices()[0]
    return {
        "device": f"{device.device_kind} ({device.platform})",
        "platform": device.platform,
        "shape": dataclasses.asdict(shape),
        "num_params": num_params,
        "attention_impl": getattr(model_config, "attention_impl", None),
        "compile_seconds": compile_seconds,
        "step_seconds": harness.summarize(seconds),
        "tokens_per_second": tokens / step,
        "flops_per_step": flops,
        "bfloat16_matmul_flops_per_second": matmul_rate,
        "mfu": flops / step / matmul_rate,
        "loss": float(metrics["train/loss"]),
    }


def summary_line(result: dict) -> str:
    return (
        f"{result['tokens_per_second']:,.0f} tokens/s, MFU "
        f"{100 * result['mfu']:.1f}% of the measured bfloat16 matmul rate "
        f"({result['bfloat16_matmul_flops_per_second'] / 1e12:,.1f} TFLOP/s), "
        f"{result['num_params'] / 1e6:,.1f}M parameters, batch "
        f"{result['shape']['batch_size']} x {result['shape']['seq_len']:,}"
    )


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; see --help.")
    shape = QUICK_SHAPE if FLAGS.quick else GpuShape()
    if FLAGS.batch_size is not None:
        shape = dataclasses.replace(shape, batch_size=FLAGS.batch_size)
    result = run(shape, steps=FLAGS.steps, warmup=FLAGS.warmup)
    print(f"{result['device']}: {summary_line(result)}")
    print(json.dumps(result, indent=1))
    if not FLAGS.record:
        return
    if FLAGS.quick or result["platform"] != "gpu":
        raise SystemExit(
            f"--record is only for a full-size GPU run; this one ran on "
            f"{result['device']}{' with --quick' if FLAGS.quick else ''}, so "
            f"{RECORD_PATH} was left unchanged."
        )
    result.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        command=" ".join(["benchmarks/gpu.sh", *sys.argv[1:]]),
        summary=summary_line(result),
    )
    RECORD_PATH.parent.mkdir(parents=True, exist_ok=True)
    RECORD_PATH.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    logger.info("Recorded the result in %s.", RECORD_PATH)


if __name__ == "__main__":
    define_flags()
    app.run(_main)
