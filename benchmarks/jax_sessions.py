"""Benchmark sessions that run JAX: roformer_jax and transformers' Flax RoFormer.

A session builds its inputs and compiles when constructed. Its `info`
dict records what the construction learned (parameter count, XLA memory
accounting), and each `run()` times one call. `benchmarks.worker` hosts sessions in a
subprocess; tests construct them in-process.

roformer_jax is built the way the trainer builds it: an experiment config
from `configs/mlm_pretrain.py`, `validate_config`, `plan_state`,
`make_optimizer` and `make_steps`, so the timed step is the package's real
masked-LM train step.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import harness, shapes
from benchmarks.rotary import rotary_fusion_report
from configs import mlm_pretrain
from roformer_jax import rotary
from roformer_jax.interop import huggingface as hf_interop
from roformer_jax.model_config import ModelConfig
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train import tasks
from roformer_jax.train.optimizer import make_optimizer
from roformer_jax.train.state import parameter_count, plan_state
from roformer_jax.train.steps import make_steps
from roformer_jax.train.validation import validate_config

SEED = 0
MODES = ("train", "infer")
# Variants of our train step with one part removed, for the profile of a
# missed target (see `OursLanguageModel`).
VARIANTS = ("full", "gathered_head", "no_rope", "gradients_only", "forward_only")


class SkipMeasurement(Exception):
    """The installed roformer_jax lacks a feature that this row needs."""


def has_model_field(name: str) -> bool:
    return name in {field.name for field in dataclasses.fields(ModelConfig)}


def experiment_config(
    shape: shapes.ModelShape,
    dropout: float,
    *,
    attention_impl: str | None = None,
    position_encoding: str = "rope",
):
    """Return the masked-LM pre-training config resized to `shape`.

    Hidden and attention dropout are both `dropout`, as transformers'
    `hidden_dropout_prob` and `attention_probs_dropout_prob` (0.1 by
    default) are. The mesh is one device.

    Raises:
      SkipMeasurement: `attention_impl` is given but ModelConfig has no
        `attention_impl` field yet.
    """
    config = mlm_pretrain.get_config()
    config.model.update(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        mlp_dim=shape.mlp_dim,
        # transformers sizes its sinusoid table from this; RoPE ignores it.
        max_position_embeddings=max(512, shape.seq_len),
        dropout_rate=dropout,
        attention_dropout_rate=dropout,
        position_encoding=position_encoding,
    )
    config.tokenizer.vocab_size = shape.vocab_size
    config.data.seq_len = shape.seq_len
    config.data.global_batch_size = shape.batch_size
    config.data.eval_batch_size = shape.batch_size
    config.mesh.update(data=1, fsdp=1, tensor=1)
    if attention_impl is not None:
        if not has_model_field("attention_impl"):
            raise SkipMeasurement(
                f"ModelConfig has no attention_impl field, so attention_impl="
                f"{attention_impl!r} cannot be selected; rerun once it exists."
            )
        with config.unlocked():
            config.model.attention_impl = attention_impl
    return config


def optimizer_settings(config) -> dict:
    """Return the AdamW settings that the other libraries copy."""
    optim = config.optim
    return {
        "learning_rate": float(optim.learning_rate),
        "beta1": float(optim.beta1),
        "beta2": float(optim.beta2),
        "epsilon": float(optim.epsilon),
        "weight_decay": float(optim.weight_decay),
        "grad_clip_norm": float(optim.grad_clip_norm),
    }


def hf_config_dict(model_config: ModelConfig) -> dict:
    """Return transformers' RoFormerConfig fields for the same model."""
    hf_interop.check_representable(model_config)
    return hf_interop.hf_config_from_model_config(model_config, "masked_lm")


def _block(tree) -> None:
    jax.block_until_ready(tree)


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _cost_summary(compiled) -> dict:
    """Return XLA's whole-program cost estimate: FLOPs, bytes accessed and
    transcendental ops (sin, exp, ...)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # Older JAX returns one dict per device.
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {
        "xla_flops": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "xla_transcendentals": float(cost.get("transcendentals", 0.0)),
    }


def _compiled_info(compiled, compile_seconds: float) -> dict:
    return {
        "compile_seconds": compile_seconds,
        "xla_peak_bytes": harness.xla_peak_bytes(compiled.memory_analysis()),
        **_cost_summary(compiled),
    }


def _gathered_batch(batch: dict, shape: shapes.ModelShape) -> dict:
    """Predict P = MASK_RATE * T positions per row, gathered before the head."""
    count = max(1, round(shapes.MASK_RATE * shape.seq_len))
    rng = np.random.default_rng(SEED)
    picked = np.sort(
        np.stack(
            [
                rng.choice(shape.seq_len, size=count, replace=False)
                for _ in range(shape.batch_size)
            ]
        ),
        axis=1,
    ).astype(np.int32)
    gathered = dict(batch)
    gathered["prediction_positions"] = picked
    gathered["targets"] = np.take_along_axis(batch["targets"], picked, axis=1)
    gathered["weights"] = np.ones(picked.shape, np.float32)
    return gathered


# --- roformer_jax -----------------------------------------------------------


class OursLanguageModel:
    """roformer_jax's masked LM: one train step or one forward pass per run.

    `variant` removes one part of the train step for a profile by removal.
    `gathered_head` predicts only the masked positions (LM head on 15% of
    the tokens) and `no_rope` drops the position encoding. `gradients_only`
    skips the optimizer update, and `forward_only` also the backward pass.
    `full` is the package's `make_steps` train step unchanged. The last two
    variants reuse the task's forward pass and loss in a jitted function of
    their own.
    """

    def __init__(
        self,
        shape: dict,
        dropout: float,
        mode: str = "train",
        variant: str = "full",
        attention_impl: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid; use one of {MODES}.")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is invalid; use one of {VARIANTS}.")
        self.shape = shapes.shape_from_dict(shape)
        config = experiment_config(
            self.shape,
            dropout,
            attention_impl=attention_impl,
            position_encoding="none" if variant == "no_rope" else "rope",
        )
        model_config = validate_config(
            config, device_count=jax.device_count(), vocab_size=self.shape.vocab_size
        )
        self.task = tasks.LanguageModelTask("masked_lm")
        self.model = self.task.build_model(model_config)
        mesh = mesh_lib.make_mesh(config.mesh)
        tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
        layout = plan_state(
            self.model,
            tx,
            jax.random.PRNGKey(SEED),
            mesh,
            mesh_lib.axis_rules(config.mesh),
            seq_len=self.shape.seq_len,
        )
        steps = make_steps(
            self.task,
            self.model,
            tx,
            schedule,
            layout.shardings,
            mesh,
            dropout_seed=SEED + 1,
        )
        self.state = layout.initialize()
        batch = shapes.masked_lm_batch(self.shape, SEED)
        if variant == "gathered_head":
            batch = _gathered_batch(batch, self.shape)
        self.batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
        num_params = parameter_count(self.state.params)

        start = time.perf_counter()
        if mode == "infer":
            compiled = self._compile_forward(deterministic=True)
        elif variant == "gradients_only":
            compiled = self._compile_gradients()
        elif variant == "forward_only":
            compiled = self._compile_forward(deterministic=False)
        else:
            compiled = steps.train.lower(self.state, self.batch).compile()
        self._compiled = compiled
        self._mode, self._variant = mode, variant
        flops = (
            shapes.training_flops(self.shape, num_params)
            if mode == "train"
            else shapes.inference_flops(self.shape, num_params)
        )
        self.info = {
            "num_params": num_params,
            "flops_per_step": flops,
            "hf_config": hf_config_dict(model_config) if variant == "full" else None,
            "optimizer": optimizer_settings(config),
            "attention_impl": getattr(model_config, "attention_impl", None),
            **_compiled_info(compiled, time.perf_counter() - start),
            "rotary_fusions": rotary_fusion_report(
                compiled.as_text(), self.shape.tokens_per_step * self.shape.hidden_size
            ),
        }

    def _compile_forward(self, *, deterministic: bool):
        def forward(params, batch):
            rngs = None if deterministic else {"dropout": jax.random.PRNGKey(SEED)}
            outputs = self.task.forward(
                self.model, params, batch, deterministic=deterministic, rngs=rngs
            )
            if deterministic:
                return outputs  # Inference: the [B, T, V] logits.
            return self.task.loss_sums(outputs, batch)["loss_sum"]

        return jax.jit(forward).lower(self.state.params, self.batch).compile()

    def _compile_gradients(self):
        def gradients(params, batch):
            def loss_fn(params):
                rngs = {"dropout": jax.random.PRNGKey(SEED)}
                outputs = self.task.forward(
                    self.model, params, batch, deterministic=False, rngs=rngs
                )
                sums = self.task.loss_sums(outputs, batch)
                return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0)

            return jax.value_and_grad(loss_fn)(params)

        return jax.jit(gradients).lower(self.state.params, self.batch).compile()

    def run(self) -> dict:
        if self._mode == "train" and self._variant in (
            "full",
            "gathered_head",
            "no_rope",
        ):

            def step():
                self.state, metrics = self._compiled(self.state, self.batch)
                _block((self.state, metrics))

            return {"seconds": _time(step)}
        return {
            "seconds": _time(
                lambda: _block(self._compiled(self.state.params, self.batch))
            )
        }


class OursCompile:
    """Time tracing, lowering and compiling our first train step, caches cleared.

    The persistent compilation cache is switched off, so every run compiles
    from scratch as a first step in a new process would.
    """

    def __init__(self, shape: dict, dropout: float = 0.0):
        jax.config.update("jax_enable_compilation_cache", False)
        self.shape = shapes.shape_from_dict(shape)
        config = experiment_config(self.shape, dropout)
        model_config = validate_config(
            config, device_count=jax.device_count(), vocab_size=self.shape.vocab_size
        )
        task = tasks.LanguageModelTask("masked_lm")
        model = task.build_model(model_config)
        mesh = mesh_lib.make_mesh(config.mesh)
        tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
        layout = plan_state(
            model,
            tx,
            jax.random.PRNGKey(SEED),
            mesh,
            mesh_lib.axis_rules(config.mesh),
            seq_len=self.shape.seq_len,
        )
        self._make_steps = lambda: make_steps(
            task, model, tx, schedule, layout.shardings, mesh, dropout_seed=SEED + 1
        )
        self.state = layout.initialize()
        self.batch = jax.device_put(
            shapes.masked_lm_batch(self.shape, SEED), mesh_lib.batch_sharding(mesh)
        )
        self.info = {
            "num_params": parameter_count(self.state.params),
            "hf_config": hf_config_dict(model_config),
        }

    def run(self) -> dict:
        jax.clear_caches()
        start = time.perf_counter()
        lowered = self._make_steps().train.lower(self.state, self.batch)
        lowered_at = time.perf_counter()
        lowered.compile()
        end = time.perf_counter()
        return {
            "seconds": end - start,
            "trace_seconds": lowered_at - start,
            "xla_seconds": end - lowered_at,
        }


# --- transformers' Flax RoFormer --------------------------------------------


class HfFlaxLanguageModel:
    """transformers' `FlaxRoFormerForMaskedLM`, trained with the same Optax
    AdamW chain as ours (`make_optimizer`: global-norm clipping, AdamW with
    decay on kernels and embeddings) and the same loss function.

    The step is jitted with the state donated, as ours is; the dropout key
    of step s is `fold_in(key, s)`.
    """

    def __init__(
        self,
        shape: dict,
        hf_config: dict,
        mode: str = "train",
        compile_only: bool = False,
    ):
        from transformers import FlaxRoFormerForMaskedLM, RoFormerConfig

        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid; use one of {MODES}.")
        self.shape = shapes.shape_from_dict(shape)
        model = FlaxRoFormerForMaskedLM(
            RoFormerConfig(**hf_config),
            input_shape=(1, self.shape.seq_len),
            seed=SEED,
            dtype=jnp.float32,
        )
        config = experiment_config(self.shape, float(hf_config["hidden_dropout_prob"]))
        tx, _ = make_optimizer(config.optim, config.train.num_train_steps)
        self.batch = jax.device_put(shapes.masked_lm_batch(self.shape, SEED))
        base_key = jax.random.PRNGKey(SEED + 1)

        def logits_fn(params, batch, train: bool, key):
            return model(
                batch["inputs"],
                attention_mask=batch["segment_ids"],
                token_type_ids=batch["token_types"],
                params=params,
                dropout_rng=key,
                train=train,
            ).logits

        def train_step(state, batch):
            step, params, opt_state = state

            def loss_fn(params):
                logits = logits_fn(
                    params, batch, True, jax.random.fold_in(base_key, step)
                )
                sums = tasks.weighted_cross_entropy(
                    logits, batch["targets"], batch["weights"]
                )
                return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (step + 1, params, opt_state), loss

        def forward(params, batch):
            return logits_fn(params, batch, False, None)

        params = model.params
        self._mode = mode
        if mode == "train":
            self.state = (jnp.zeros((), jnp.int32), params, tx.init(params))
            self._jitted = jax.jit(train_step, donate_argnums=0)
            self._arguments = lambda: (self.state, self.batch)
        else:
            self.params = params
            self._jitted = jax.jit(forward)
            self._arguments = lambda: (self.params, self.batch)
        self.info = {"num_params": parameter_count(params)}
        if not compile_only:
            start = time.perf_counter()
            self._compiled = self._jitted.lower(*self._arguments()).compile()
            self.info.update(
                _compiled_info(self._compiled, time.perf_counter() - start)
            )

    def run(self) -> dict:
        if self._mode == "train":

            def step():
                self.state, loss = self._compiled(self.state, self.batch)
                _block((self.state, loss))

            return {"seconds": _time(step)}
        return {
            "seconds": _time(lambda: _block(self._compiled(self.params, self.batch)))
        }


class HfFlaxCompile:
    """Time tracing, lowering and compiling the Flax RoFormer train step."""

    def __init__(self, shape: dict, hf_config: dict):
        jax.config.update("jax_enable_compilation_cache", False)
        self._model = HfFlaxLanguageModel(shape, hf_config, "train", compile_only=True)
        self.info = dict(self._model.info)

    def run(self) -> dict:
        jax.clear_caches()
        start = time.perf_counter()
        lowered = self._model._jitted.lower(*self._model._arguments())
        lowered_at = time.perf_counter()
        lowered.compile()
        end = time.perf_counter()
        return {
            "seconds": end - start,
            "trace_seconds": lowered_at - start,
            "xla_seconds": end - lowered_at,
        }


# --- machine peaks ----------------------------------------------------------


class Matmul:
    """One `size x size` matmul; 2 size^3 FLOPs per run."""

    def __init__(self, size: int = 2048, dtype: str = "float32"):
        keys = jax.random.split(jax.random.PRNGKey(SEED))
        self.a = jax.random.normal(keys[0], (size, size), dtype)
        self.b = jax.random.normal(keys[1], (size, size), dtype)
        self._compiled = jax.jit(jnp.matmul).lower(self.a, self.b).compile()
        self.info = {"flops_per_run": 2.0 * size**3, "size": size}

    def run(self) -> dict:
        return {"seconds": _time(lambda: _block(self._compiled(self.a, self.b)))}


class Copy:
    """Multiply float32 arrays by a runtime scalar: each element is read once
    and written once, so `bytes_per_run` is twice the arrays' size.

    The scalar is an argument, so XLA cannot fold the multiply away, and the
    output cannot reuse the input buffer because the input is not donated.
    """

    def __init__(self, shapes_list: list):
        keys = jax.random.split(jax.random.PRNGKey(SEED), len(shapes_list))
        self.arrays = tuple(
            jax.random.normal(key, tuple(shape), jnp.float32)
            for key, shape in zip(keys, shapes_list, strict=True)
        )
        self.scale = jnp.float32(1.0001)
        scale_all = jax.jit(lambda arrays, scale: tuple(x * scale for x in arrays))
        self._compiled = scale_all.lower(self.arrays, self.scale).compile()
        self.info = {"bytes_per_run": 2 * sum(x.nbytes for x in self.arrays)}

    def run(self) -> dict:
        return {
            "seconds": _time(lambda: _block(self._compiled(self.arrays, self.scale)))
        }


# --- rotary application -----------------------------------------------------


def rotary_inputs(shape: list) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Return float32 q and k of `[B, T, N, H]` `shape`, and `[B, T]` positions."""
    batch, length = shape[0], shape[1]
    keys = jax.random.split(jax.random.PRNGKey(SEED))
    q = jax.random.normal(keys[0], tuple(shape), jnp.float32)
    k = jax.random.normal(keys[1], tuple(shape), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return q, k, positions


def ours_rotate(q, k, positions):
    """Rotate queries and keys as our attention does (interleaved, base 1e4)."""
    return rotary.apply_rotary(q, positions), rotary.apply_rotary(k, positions)


def hf_flax_rotate(sinusoidal_pos, q, k):
    from transformers.models.roformer.modeling_flax_roformer import (
        FlaxRoFormerSelfAttention,
    )

    return FlaxRoFormerSelfAttention.apply_rotary_position_embeddings(
        sinusoidal_pos, q, k
    )


def hf_flax_table(length: int, head_dim: int) -> jax.Array:
    """Return the `[T, H]` sin-then-cos table that Flax RoFormer slices."""
    from transformers.models.roformer.modeling_flax_roformer import (
        create_sinusoidal_positions,
    )

    return create_sinusoidal_positions(length, head_dim)


class OursRotary:
    """`roformer_jax.rotary.apply_rotary` on q and k: reads `[B, T]` int32
    positions and computes sine and cosine itself."""

    def __init__(self, shape: list):
        self.q, self.k, self.positions = rotary_inputs(shape)
        self._compiled = (
            jax.jit(ours_rotate).lower(self.q, self.k, self.positions).compile()
        )
        self.info = {"table_bytes": int(self.positions.nbytes)}

    def run(self) -> dict:
        return {
            "seconds": _time(
                lambda: _block(self._compiled(self.q, self.k, self.positions))
            )
        }


class HfFlaxRotary:
    """`FlaxRoFormerSelfAttention.apply_rotary_position_embeddings` on q and
    k, with the `[T, H]` table that the Flax model passes it."""

    def __init__(self, shape: list):
        self.q, self.k, _ = rotary_inputs(shape)
        self.table = jax.device_put(hf_flax_table(shape[1], shape[3]))
        self._compiled = (
            jax.jit(hf_flax_rotate).lower(self.table, self.q, self.k).compile()
        )
        self.info = {"table_bytes": int(self.table.nbytes)}

    def run(self) -> dict:
        return {
            "seconds": _time(lambda: _block(self._compiled(self.table, self.q, self.k)))
        }


SESSIONS = {
    "OursLanguageModel": OursLanguageModel,
    "OursCompile": OursCompile,
    "HfFlaxLanguageModel": HfFlaxLanguageModel,
    "HfFlaxCompile": HfFlaxCompile,
    "Matmul": Matmul,
    "Copy": Copy,
    "OursRotary": OursRotary,
    "HfFlaxRotary": HfFlaxRotary,
}
