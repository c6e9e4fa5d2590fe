"""The trainer, in named phases: setup, data, model and state, restore, loop.

Experiments, tests and notebooks call `train_and_evaluate(config, workdir)`;
there is no other training loop. In a multi-process run (see `distributed`)
every process runs it: each loads its own rows of every batch, process 0
writes the workdir's files, and all processes save and restore checkpoints.
"""

import contextlib
import dataclasses
import logging
import os
import time

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from roformer_jax.data.prefetch import Prefetcher
from roformer_jax.train import distributed, faults, perf, pretrained, tasks
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
from roformer_jax.train.inputs import TaskData, load_task_data
from roformer_jax.train.metrics import MetricWriter, Progress, format_duration
from roformer_jax.train.optimizer import make_optimizer
from roformer_jax.train.state import (
    StateLayout,
    TrainState,
    parameter_count,
    parameter_table,
    plan_state,
)
from roformer_jax.train.steps import Steps, make_steps
from roformer_jax.train.validation import validate_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """The mesh, data, model, compiled steps and state that the loop uses."""

    config: object
    workdir: str
    mesh: Mesh
    data: TaskData
    model: nn.Module
    steps: Steps
    state: TrainState
    start_step: int
    checkpointer: Checkpointer
    writer: MetricWriter
    flops_per_step: float
    peak_flops_per_second: float
    tokens_per_step: int


def _write_config(config, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    logger.info("Config:\n%s", config)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as file:
            file.write(config.to_json_best_effort(indent=2))


def _global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global batch arrays from this process's rows of them.

    `batch` contains the rows of `distributed.process_batch_shard(mesh)`, so
    the global batch has `count` times as many rows.
    """
    sharding = mesh_lib.batch_sharding(mesh)
    shard_count = distributed.process_batch_shard(mesh).count

    def place(local: np.ndarray) -> jax.Array:
        global_shape = (local.shape[0] * shard_count, *local.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return {name: place(array) for name, array in batch.items()}


def _peak_flops(config, mesh: Mesh) -> float:
    """Peak FLOP/s of the whole mesh: configured, or measured on device 0.

    Fake CPU devices share one host's cores, so on CPU the peak of one
    device is the peak of the mesh.
    """
    per_device = config.train.peak_flops_per_second
    if per_device is None:
        per_device = perf.measure_matmul_peak()
        logger.info(
            "Measured float32 matmul peak: %.1f GFLOP/s per device.", per_device / 1e9
        )
    if jax.devices()[0].platform == "cpu":
        return per_device
    return per_device * mesh.devices.size


def setup(config, workdir: str) -> Run:
    """Validate, build mesh, data, model and state, and restore if possible."""
    validate_config(config, device_count=jax.device_count())
    _write_config(config, workdir)
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = mesh_lib.axis_rules(config.mesh)
    logger.info("Mesh %s over %d devices.", dict(mesh.shape), mesh.devices.size)
    shard = distributed.process_batch_shard(mesh)
    if shard.count > 1:
        logger.info(
            "Each of %d processes loads 1/%d of every batch.",
            jax.process_count(),
            shard.count,
        )

    data = load_task_data(config, workdir, shard)
    model_config = validate_config(
        config, device_count=jax.device_count(), vocab_size=data.vocab_size
    )
    model = data.task.build_model(model_config)
    tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
    layout = plan_state(
        model,
        tx,
        jax.random.PRNGKey(config.seed),
        mesh,
        rules,
        seq_len=config.data.seq_len,
    )
    num_params = parameter_count(layout.abstract.params)

    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.max_checkpoints_to_keep,
        global_batch_size=config.data.global_batch_size,
    )
    state, start_step = _restore(checkpointer, layout)
    if start_step == 0 and config.get("finetune", {}).get("init_workdir"):
        state = pretrained.load_encoder(
            state,
            layout,
            config.finetune.init_workdir,
            extend_positions=config.finetune.extend_position_embeddings,
            model_fields=dict(config.model),
        )
    if start_step == 0 and config.get("finetune", {}).get("init_hf_dir"):
        state = pretrained.load_huggingface_encoder(
            state, layout, config.finetune.init_hf_dir, model_config
        )
    logger.info(
        "Parameters (%s):\n%s", f"{num_params:,}", parameter_table(state.params)
    )
    steps = make_steps(
        data.task,
        model,
        tx,
        schedule,
        layout.shardings,
        mesh,
        dropout_seed=config.seed + 1,
        skip_nonfinite=config.train.get("nonfinite_policy", "stop") == "skip",
        rules=rules,
    )
    sample = data.train.batch(0)
    tokens_per_step = int(sample["inputs"].size) * shard.count
    flops = perf.model_flops_per_step(
        num_params=num_params,
        num_layers=model_config.num_layers,
        hidden_size=model_config.hidden_size,
        seq_len=config.data.seq_len,
        batch_size=tokens_per_step // config.data.seq_len,
    )
    if "prediction_positions" in sample:
        # The tied output projection (6 V E FLOPs per token in 6 N) only
        # runs at the gathered positions.
        predicted = sample["prediction_positions"].size * shard.count
        skipped = tokens_per_step - predicted
        flops -= 6.0 * model_config.vocab_size * model_config.embedding_dim * skipped
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        data=data,
        model=model,
        steps=steps,
        state=state,
        start_step=start_step,
        checkpointer=checkpointer,
        writer=MetricWriter(workdir, tensorboard=config.train.tensorboard),
        flops_per_step=flops,
        peak_flops_per_second=_peak_flops(config, mesh),
        tokens_per_step=tokens_per_step,
    )


def _restore(checkpointer: Checkpointer, layout: StateLayout) -> tuple[TrainState, int]:
    """Restore the latest readable checkpoint, or initialise when there is none.

    A checkpoint that cannot be read (truncated or corrupted files) is moved
    aside with a warning naming its step, and the one before it is tried.
    A checkpoint that does not fit the config is an error, not a fallback,
    and so is running out of memory while reading one: the files are fine,
    and moving them aside would restart training from step 0.
    """
    for step in sorted(checkpointer.all_steps(), reverse=True):
        try:
            state, data_state = checkpointer.restore(step, layout.abstract)
        except (CheckpointMismatchError, MemoryError):
            raise
        except Exception as error:  # noqa: BLE001  (any read failure falls back)
            if "RESOURCE_EXHAUSTED" in str(error):
                raise
            moved_to = checkpointer.set_aside(step)
            logger.warning(
                "Checkpoint %d is unreadable (%s: %s); moved it to %s and trying "
                "the one before it.",
                step,
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
                moved_to,
            )
            continue
        if data_state["next_step"] != step:
            raise ValueError(
                f"Checkpoint {step} records data position {data_state['next_step']}; "
                "the checkpoint is inconsistent. Delete it or use a new --workdir."
            )
        logger.info("Restored checkpoint at step %d.", step)
        return state, step
    logger.info("No checkpoint found; initialising at step 0.")
    return layout.initialize(), 0


def evaluate(run: Run, params) -> dict[str, float]:
    """Metrics of `params` over the validation split, as the task defines
    them: per token for language models, per example for classification."""
    outputs = []
    for index, batch in enumerate(run.data.eval_batches()):
        if (
            run.config.train.eval_max_batches is not None
            and index >= run.config.train.eval_max_batches
        ):
            break
        outputs.append(
            jax.device_get(
                run.steps.evaluate(
                    params, _global_batch(batch, run.mesh), run.state.step
                )
            )
        )
    if not outputs:
        raise ValueError(
            "The validation split gave no evaluation batch; check data.* and "
            "train.eval_max_batches."
        )
    return run.data.task.summarize(tasks.collect_eval_outputs(outputs))


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Average each metric over the interval, except the learning rate,
    which is reported at the interval's last step."""
    fetched = jax.device_get(pending)
    # Skipped (non-finite) steps would make every mean NaN; the guard has
    # already logged them, and `train/finite` keeps their share.
    finite = [row for row in fetched if row["train/finite"] == 1.0] or fetched
    means = {key: float(np.mean([row[key] for row in finite])) for key in fetched[0]}
    means["train/finite"] = float(np.mean([row["train/finite"] for row in fetched]))
    means["train/learning_rate"] = float(fetched[-1]["train/learning_rate"])
    return means


def _log_train(
    run: Run, step: int, pending: list[dict], progress: Progress, prefetcher
) -> None:
    metrics = _mean_metrics(pending)
    rates = progress.report(step)
    wait = prefetcher.take_wait_seconds()
    interval = len(pending) / max(rates["perf/steps_per_second"], 1e-9)
    metrics.update(rates)
    metrics["perf/input_wait_fraction"] = min(wait / max(interval, 1e-9), 1.0)
    metrics["perf/mfu"] = (
        rates["perf/steps_per_second"] * run.flops_per_step / run.peak_flops_per_second
    )
    run.writer.write_scalars(step, metrics)
    logger.info(
        "step %d/%d  loss %.4f  lr %.2e  %.2f steps/s  %.0f tokens/s  MFU %.1f%%  input wait %.1f%%  ETA %s",
        step,
        run.config.train.num_train_steps,
        metrics["train/loss"],
        metrics["train/learning_rate"],
        rates["perf/steps_per_second"],
        rates["perf/tokens_per_second"],
        100 * metrics["perf/mfu"],
        100 * metrics["perf/input_wait_fraction"],
        format_duration(rates["perf/eta_seconds"]),
    )


def _evaluate_and_log(run: Run, step: int) -> dict[str, float]:
    start = time.perf_counter()
    metrics = evaluate(run, run.state.params)
    metrics["perf/eval_seconds"] = time.perf_counter() - start
    run.writer.write_scalars(step, metrics)
    logger.info(
        "eval at step %d: %s",
        step,
        "  ".join(
            f"{name.removeprefix('eval/')} {value:.4g}"
            for name, value in metrics.items()
            if name.startswith("eval/")
        ),
    )
    return metrics


def _sigterm_received(terminate, step: int, train_config) -> bool:
    """Return whether to stop for SIGTERM after `step`, alike on every process.

    The checkpoint save that follows is collective, so all processes must
    stop at the same step. They agree at log steps only, where the loop
    already waits for the devices, so a multi-process run stops up to
    train.log_every_steps steps after the signal.
    """
    if jax.process_count() == 1:
        return bool(terminate)
    if step % train_config.log_every_steps and step != train_config.num_train_steps:
        return False
    # NOTE: no test sends SIGTERM to a multi-process run; the 2-process test
    # only runs this agreement with no signal.
    return distributed.any_process(bool(terminate))


def train_loop(run: Run, *, stop_after_step: int | None = None) -> dict[str, float]:
    """Train from `run.start_step` to `train.num_train_steps`; return the
    last evaluation metrics (an empty dict if no step ran).

    `stop_after_step` ends the loop early, after that step's checkpoint, as a
    preemption would; the schedule still spans `train.num_train_steps`.
    """
    train_config = run.config.train
    total = train_config.num_train_steps
    if run.start_step >= total:
        logger.info(
            "Checkpoint step %d already reaches train.num_train_steps=%d; "
            "raise --config.train.num_train_steps to train further.",
            run.start_step,
            total,
        )
        return {}
    progress = Progress(run.start_step, total, run.tokens_per_step)
    prefetcher = Prefetcher(
        run.data.train.batch,
        run.start_step,
        buffer_size=run.config.data.prefetch_batches,
    )
    pending: list[dict] = []
    eval_metrics: dict[str, float] = {}
    guard = faults.NonFiniteGuard(
        train_config.get("nonfinite_policy", "stop"),
        train_config.get("max_consecutive_skips", 3),
    )
    last_checkpoint = run.start_step or None
    with contextlib.ExitStack() as stack:
        stack.callback(run.checkpointer.wait)
        stack.callback(prefetcher.close)
        terminate = stack.enter_context(faults.catch_sigterm())
        for step in range(run.start_step + 1, total + 1):
            batch_index, batch = prefetcher.next()
            first = step == run.start_step + 1
            if first:
                compile_start = time.perf_counter()
            run.state, metrics = run.steps.train(
                run.state, _global_batch(batch, run.mesh)
            )
            guard.record(step, batch_index, metrics["train/finite"])
            pending.append(metrics)
            if first:
                jax.block_until_ready(run.state)
                logger.info(
                    "First step (compile included) took %.1f s.",
                    time.perf_counter() - compile_start,
                )
                progress.restart_clock(step)
                prefetcher.take_wait_seconds()
            last = step == total
            if step % train_config.log_every_steps == 0 or last:
                guard.check(last_checkpoint)
                _log_train(run, step, pending, progress, prefetcher)
                pending.clear()
            paused = False
            if step % train_config.eval_every_steps == 0 or last:
                guard.check(last_checkpoint)
                eval_metrics = _evaluate_and_log(run, step)
                paused = True
            terminated = _sigterm_received(terminate, step, train_config)
            stopping = step == stop_after_step or terminated
            if step % train_config.checkpoint_every_steps == 0 or last or stopping:
                guard.check(last_checkpoint)
                faults.check_finite_parameters(metrics["train/param_norm"], step)
                run.checkpointer.save(step, run.state, {"next_step": step})
                last_checkpoint = step
                paused = True
            if terminated:
                logger.info(
                    "Received SIGTERM: saved a checkpoint at step %d and stopped. "
                    "Run the same command to resume.",
                    step,
                )
                break
            if stopping:
                logger.info("Stopping after step %d as requested.", step)
                break
            if paused:
                progress.restart_clock(step)
    return eval_metrics


def train_and_evaluate(
    config, workdir: str, *, stop_after_step: int | None = None
) -> dict[str, float]:
    """Train `config` in `workdir`, resuming from its latest checkpoint.

    `stop_after_step` simulates a preemption; see `train_loop`.
    """
    run = setup(config, workdir)
    try:
        return train_loop(run, stop_after_step=stop_after_step)
    finally:
        run.checkpointer.close()
        run.writer.close()
