"""Sharding by the logical axis rules: parameters, optimizer state and
activations on the eight fake devices, and ahead-of-time compilation of the
full-size configs for a pod-sized mesh of fake CPU devices.

Run as a script (`python tests/test_sharding.py OUT.json`), this file compiles
the full-size configs and writes what it measured. The pod tests start it in
a subprocess because JAX fixes the device count when it starts.
"""

import functools
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh

from configs import enwik8, mlm_pretrain, tiny_shakespeare
from roformer_jax.model_config import ModelConfig
from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train import tasks
from roformer_jax.train.optimizer import make_optimizer
from roformer_jax.train.state import parameter_count, plan_state
from roformer_jax.train.steps import make_steps
from roformer_jax.train.text_inputs import max_predictions
from roformer_jax.train.validation import ConfigError, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The tiny causal LM: the `smoke` variant of tiny_shakespeare (2 layers,
# D=32, N=2, F=64, T=32, B=8) with a 64-token vocabulary.
VOCAB_SIZE = 64
NUM_STEPS = 3
MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, fsdp, tensor)
# Parameter arrays: 16 per layer, the token table, the final LayerNorm (2) and
# the LM head (transform kernel and bias, LayerNorm scale and bias, bias: 5).
NUM_PARAMETERS = 2 * 16 + 1 + 2 + 5

# The logical axes that each parameter is meant to carry, keyed by the end of
# its path (`name.endswith(key)`). `lm_head/transform/bias` is a plain
# `nn.Dense` bias, so it has no logical axis and stays replicated.
PARAMETER_AXES = {
    "embeddings/token/embedding": ("vocab", "embed"),
    "attention/query/kernel": ("embed", "heads", "kv"),
    "attention/key/kernel": ("embed", "heads", "kv"),
    "attention/value/kernel": ("embed", "heads", "kv"),
    "attention/query/bias": ("heads", "kv"),
    "attention/key/bias": ("heads", "kv"),
    "attention/value/bias": ("heads", "kv"),
    "attention/output/kernel": ("heads", "kv", "embed"),
    "attention/output/bias": ("embed",),
    "feed_forward/intermediate/kernel": ("embed", "mlp"),
    "feed_forward/intermediate/bias": ("mlp",),
    "feed_forward/output/kernel": ("mlp", "embed"),
    "feed_forward/output/bias": ("embed",),
    "layer_norm/scale": ("embed",),  # Every LayerNorm's name ends in layer_norm.
    "layer_norm/bias": ("embed",),
    "lm_head/transform/kernel": ("embed", None),
    "lm_head/transform/bias": (None,),
    "lm_head/bias": ("vocab",),
}


def smoke_config(shape: tuple[int, int, int]):
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = shape
    return config


def random_batch(config, index: int) -> dict[str, np.ndarray]:
    """A causal-LM batch of random tokens; `index` seeds it."""
    rng = np.random.default_rng(index)
    batch_size, length = config.data.global_batch_size, config.data.seq_len
    tokens = rng.integers(0, VOCAB_SIZE, (batch_size, length + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens[:, 1:].shape)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": np.ascontiguousarray(positions),
        "segment_ids": np.ones((batch_size, length), np.int32),
        "weights": np.ones((batch_size, length), np.float32),
    }


def build(config, mesh, vocab_size: int, *, validate: bool = True):
    """Plan the state and jit the steps of `config` on `mesh`, as the trainer
    does; return (task, model, layout, steps)."""
    if validate:
        model_config = validate_config(
            config, device_count=mesh.size, vocab_size=vocab_size
        )
    else:
        model_config = ModelConfig.from_config(config.model, vocab_size=vocab_size)
    rules = mesh_lib.axis_rules(config.mesh)
    task = tasks.LanguageModelTask(config.task)
    model = task.build_model(model_config)
    tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
    layout = plan_state(
        model,
        tx,
        jax.random.PRNGKey(config.seed),
        mesh,
        rules,
        seq_len=config.data.seq_len,
    )
    steps = make_steps(
        task,
        model,
        tx,
        schedule,
        layout.shardings,
        mesh,
        dropout_seed=config.seed + 1,
        rules=rules,
    )
    return task, model, layout, steps


@functools.cache
def train_tiny(shape: tuple[int, int, int]):
    """Train the tiny model for NUM_STEPS steps on a mesh of `shape`; return
    the losses and the final state."""
    config = smoke_config(shape)
    mesh = mesh_lib.make_mesh(config.mesh)
    _, _, layout, steps = build(config, mesh, VOCAB_SIZE)
    state = layout.initialize()
    losses = []
    for index in range(NUM_STEPS):
        batch = jax.device_put(
            random_batch(config, index), mesh_lib.batch_sharding(mesh)
        )
        state, metrics = steps.train(state, batch)
        losses.append(float(metrics["train/loss"]))
    return np.array(losses), state


def path_name(path) -> str:
    return "/".join(str(getattr(key, "key", key)) for key in path)


def expected_spec(axes: tuple[str | None, ...], axis_rules) -> tuple:
    """Map logical axes to mesh axes by the first rule that names each.

    Flax also drops a mesh axis that an earlier dimension of the same array
    already uses. No parameter maps two dimensions to one mesh axis, so this
    lookup leaves that out.
    """
    table = {}
    for logical, mesh_axes in axis_rules:
        if isinstance(mesh_axes, list | tuple):
            mesh_axes = tuple(mesh_axes)
        table.setdefault(logical, mesh_axes)
    return tuple(None if name is None else table[name] for name in axes)


def padded_spec(sharding, ndim: int) -> tuple:
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


# Training on meshes of the eight fake devices.


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=str)
def test_mesh_losses_match_one_device(shape):
    """Sharded training gives the one-device losses, dropout included, to
    float32 tolerance. Sharded matmuls only sum in another order."""
    sharded, _ = train_tiny(shape)
    single, _ = train_tiny((1, 1, 1))
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=str)
def test_parameter_shardings_follow_rules(shape):
    _, state = train_tiny(shape)
    axis_rules = smoke_config(shape).mesh.axis_rules
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    assert len(leaves) == NUM_PARAMETERS
    for path, leaf in leaves:
        name = path_name(path)
        matches = [key for key in PARAMETER_AXES if name.endswith(key)]
        assert len(matches) == 1, f"{name} matches {matches} in PARAMETER_AXES"
        expected = expected_spec(PARAMETER_AXES[matches[0]], axis_rules)
        assert padded_spec(leaf.sharding, leaf.ndim) == expected, name


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=str)
def test_adam_moments_sharded_like_parameters(shape):
    _, state = train_tiny(shape)
    adam_states = [
        node
        for node in jax.tree.leaves(
            state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(node, optax.ScaleByAdamState)
    ]
    assert len(adam_states) == 1
    param_shardings = jax.tree.map(lambda leaf: leaf.sharding, state.params)
    for moment in ("mu", "nu"):
        moment_shardings = jax.tree.map(
            lambda leaf: leaf.sharding, getattr(adam_states[0], moment)
        )
        assert moment_shardings == param_shardings, moment


# Activation constraints.


def lowered_tiny_step(*, rules_given: bool, train: bool = True) -> str:
    """The StableHLO text of the tiny model's train or eval step on the
    (2, 2, 2) mesh."""
    config = smoke_config((2, 2, 2))
    mesh = mesh_lib.make_mesh(config.mesh)
    task, model, layout, steps = build(config, mesh, VOCAB_SIZE)
    if not rules_given:
        tx, schedule = make_optimizer(config.optim, config.train.num_train_steps)
        steps = make_steps(task, model, tx, schedule, layout.shardings, mesh, 0)
    batch = {
        name: jax.ShapeDtypeStruct(array.shape, array.dtype)
        for name, array in random_batch(config, 0).items()
    }
    if train:
        return steps.train.lower(layout.abstract, batch).as_text()
    step = jax.ShapeDtypeStruct((), jnp.int32)
    return steps.evaluate.lower(layout.abstract.params, batch, step).as_text()


def test_block_outputs_carry_constraints():
    """[B, T, D] activations split only the batch, over data and fsdp,
    because `embed` also maps to fsdp, which the batch already uses. [B, T, N, H]
    projections and [B, T, F] hidden units also split N and F over tensor."""
    constraints = [
        line
        for line in lowered_tiny_step(rules_given=True).splitlines()
        if "sdy.sharding_constraint" in line
    ]

    def count(spec: str, shape: str) -> int:
        return sum(f"<@mesh, {spec}>" in line and shape in line for line in constraints)

    # The forward pass alone constrains the embeddings and 2 block outputs,
    # and per layer 3 projections and 1 feed-forward hidden.
    assert count('[{"data", "fsdp"}, {}, {}]', "tensor<8x32x32xf32>") >= 3
    assert count('[{"data", "fsdp"}, {}, {"tensor"}, {}]', "tensor<8x32x2x16xf32>") >= 6
    assert count('[{"data", "fsdp"}, {}, {"tensor"}]', "tensor<8x32x64xf32>") >= 2


def test_eval_step_carries_constraints():
    text = lowered_tiny_step(rules_given=True, train=False)
    assert '<@mesh, [{"data", "fsdp"}, {}, {}]>' in text


def test_no_constraints_without_rules():
    text = lowered_tiny_step(rules_given=False)
    assert "sharding_constraint" not in text


def test_model_outside_mesh_has_no_constraints():
    config = smoke_config((2, 2, 2))
    model = tasks.LanguageModelTask("causal_lm").build_model(
        validate_config(config, device_count=8, vocab_size=VOCAB_SIZE)
    )
    batch = random_batch(config, 0)
    inputs = (batch["inputs"], batch["positions"], batch["segment_ids"])
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)
    with nn.logical_axis_rules(mesh_lib.axis_rules(config.mesh)):
        text = jax.jit(model.apply).lower(params, *inputs).as_text()
    assert "sharding_constraint" not in text


# Full-size configs on a pod-sized mesh.

POD_MESH = (16, 8, 4)  # (data, fsdp, tensor): 512 fake CPU devices.
POD_BATCH_SIZE = 128  # One sequence per device of the data and fsdp axes.
POD_CONFIGS = ("bert_base", "roformer_chinese_base", "causal_1b")
# The check needs the partitioned program, not fast CPU code, so LLVM skips
# its optimisations.
POD_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


def pod_config(name: str):
    """Return a full-size config on POD_MESH and its vocabulary size.

    NOTE: the masked LMs use the vocabulary size that their configs train. The
    released BERT WordPiece vocabulary (30522) does not split over tensor=4,
    which `validate_config` rejects. On CPU the attention runs the xla path,
    so the cudnn and pallas kernels of a GPU or TPU pod are not compiled here.
    """
    if name == "causal_1b":
        config = enwik8.get_config("size=1b,attention=softmax")
        vocab_size = 256  # Bytes.
        seq_len = 2048
    else:
        config = mlm_pretrain.get_config(f"size={name}")
        vocab_size = config.tokenizer.vocab_size
        seq_len = config.model.max_position_embeddings
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = POD_MESH
        config.data.seq_len = seq_len
        config.data.global_batch_size = POD_BATCH_SIZE
        config.data.eval_batch_size = POD_BATCH_SIZE
    return config, vocab_size


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of a train batch of `config`, laid out as `tasks` reads it."""
    batch_size, length = config.data.global_batch_size, config.data.seq_len
    tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    batch = {"inputs": tokens, "positions": tokens, "segment_ids": tokens}
    targets = length
    if config.task == "masked_lm":
        targets = max_predictions(length, config.data.mask_rate)
        batch["token_types"] = tokens
        batch["prediction_positions"] = jax.ShapeDtypeStruct(
            (batch_size, targets), jnp.int32
        )
    batch["targets"] = jax.ShapeDtypeStruct((batch_size, targets), jnp.int32)
    batch["weights"] = jax.ShapeDtypeStruct((batch_size, targets), jnp.float32)
    return batch


def nbytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def compile_pod_configs() -> dict[str, dict]:
    """Lower and compile the train step of each of POD_CONFIGS on POD_MESH;
    return the sizes and compile time of each, or its error."""
    results = {}
    for name in POD_CONFIGS:
        config, vocab_size = pod_config(name)
        try:
            mesh = mesh_lib.make_mesh(config.mesh)
            _, _, layout, steps = build(config, mesh, vocab_size)
            batch = abstract_batch(config)
            start = time.perf_counter()
            compiled = steps.train.lower(layout.abstract, batch).compile()
            memory = compiled.memory_analysis()
            results[name] = {
                "parameters": parameter_count(layout.abstract.params),
                "state_bytes": nbytes(layout.abstract),
                "batch_bytes": nbytes(batch),
                "argument_bytes_per_device": memory.argument_size_in_bytes,
                "compile_seconds": time.perf_counter() - start,
            }
        except Exception as error:  # noqa: BLE001  (each test reports its own)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    return results


@pytest.fixture(scope="module")
def pod_results(tmp_path_factory) -> dict[str, dict]:
    """Run this file as a script on POD_MESH's number of fake CPU devices."""
    output = tmp_path_factory.mktemp("pod") / "results.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={math.prod(POD_MESH)} "
        + POD_COMPILE_FLAGS
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, __file__, str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(output.read_text())


@pytest.mark.parametrize("name", POD_CONFIGS)
def test_pod_config_compiles(pod_results, name):
    result = pod_results[name]
    assert "error" not in result, result.get("error")
    print(f"{name}: compiled in {result['compile_seconds']:.1f} s")


def test_pod_causal_model_has_1b_parameters(pod_results):
    assert 1.0e9 <= pod_results["causal_1b"].get("parameters", 0) <= 1.3e9


@pytest.mark.parametrize("name", POD_CONFIGS)
def test_pod_state_split_over_fsdp_and_tensor(pod_results, name):
    """Each device stores about 1/(fsdp x tensor) of the parameters and Adam
    moments. Parameters that only `embed` shards (biases, LayerNorms, the LM
    head's transform) split over fsdp alone, hence the 10% margin."""
    result = pod_results[name]
    assert "error" not in result, result.get("error")
    data, fsdp, tensor = POD_MESH
    bound = 1.1 * result["state_bytes"] / (fsdp * tensor)
    bound += result["batch_bytes"] / (data * fsdp)
    assert result["argument_bytes_per_device"] <= bound


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mesh.tensor", 8, r"model\.num_heads=12"),
        ("data.global_batch_size", 64, r"data\.global_batch_size=64"),
    ],
)
def test_pod_check_rejects_bad_config(field, value, message):
    """BERT-base's 12 heads do not split over tensor=8, and 64 sequences do
    not split over the 128 devices of the data and fsdp axes."""
    config, vocab_size = pod_config("bert_base")
    group, name = field.split(".")
    with config.unlocked():
        config[group][name] = value
    shape = tuple(config.mesh[axis] for axis in mesh_lib.MESH_AXES)
    with pytest.raises(ConfigError, match=message):
        build(config, AbstractMesh(shape, mesh_lib.MESH_AXES), vocab_size)


def test_pod_lowering_rejects_indivisible_heads():
    """Past the config check, lowering on the abstract pod mesh fails too."""
    config, vocab_size = pod_config("bert_base")
    with config.unlocked():
        config.mesh.tensor = 8
    mesh = AbstractMesh((16, 8, 8), mesh_lib.MESH_AXES)
    _, _, layout, steps = build(config, mesh, vocab_size, validate=False)
    with pytest.raises(ValueError, match="dimension size is 12"):
        steps.train.trace(layout.abstract, abstract_batch(config)).lower(
            lowering_platforms=("cpu",)
        )


if __name__ == "__main__":
    pathlib.Path(sys.argv[1]).write_text(json.dumps(compile_pod_configs(), indent=2))
