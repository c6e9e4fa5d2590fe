"""Linear attention inside the model, its config checks, and the enwik8
comparison runner."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import enwik8 as enwik8_config
from experiments import linear_attention as experiment
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.train.validation import ConfigError, validate_config

EXCERPT = next(
    (
        pathlib.Path(__file__).resolve().parents[1]
        / ".."
        / "shared"
        / "data"
        / "enwiki_excerpt"
    ).glob("*.bz2")
)


def linear_model(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=40,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        mlp_dim=64,
        causal=True,
        attention="linear",
        favor_num_features=16,
        linear_chunk_size=8,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    values.update(overrides)
    return ModelConfig(**values)


def inputs(batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 40, (batch, length)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return tokens, positions, jnp.ones_like(tokens)


@pytest.mark.parametrize("feature_map", ["favor", "elu"])
@pytest.mark.parametrize("encoding", ["rope", "learned", "none"])
def test_causal_linear_model_ignores_future(feature_map, encoding):
    model = LanguageModel(
        linear_model(linear_feature_map=feature_map, position_encoding=encoding)
    )
    tokens, positions, segments = inputs(2, 20)
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    logits = model.apply(params, tokens, positions, segments)
    changed = tokens.at[:, 12:].set((tokens[:, 12:] + 1) % 40)
    other = model.apply(params, changed, positions, segments)
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(logits[:, :12], other[:, :12], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[:, 12:], other[:, 12:])


def test_bidirectional_linear_model_ignores_padding():
    model = LanguageModel(linear_model(causal=False, position_encoding="rope"))
    tokens, positions, _ = inputs(1, 16)
    segments = jnp.asarray([[1] * 10 + [0] * 6])
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    first = model.apply(params, tokens, positions, segments)
    second = model.apply(params, tokens.at[:, 10:].set(3), positions, segments)
    np.testing.assert_allclose(first[:, :10], second[:, :10], rtol=1e-5, atol=1e-5)


def test_favor_key_changes_the_features():
    model = LanguageModel(linear_model())
    tokens, positions, segments = inputs(1, 12)
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    fixed = model.apply(params, tokens, positions, segments)
    again = model.apply(params, tokens, positions, segments)
    drawn = model.apply(
        params, tokens, positions, segments, rngs={"favor": jax.random.PRNGKey(5)}
    )
    np.testing.assert_array_equal(fixed, again)
    assert not np.allclose(fixed, drawn)


def enwik8_smoke(tmp_path, variant="attention=linear,posenc=rope"):
    config = enwik8_config.get_config(variant + ",smoke")
    with config.unlocked():
        config.data.manual_dir = str(EXCERPT.parent)
        config.data.source_file = EXCERPT.name
        config.data.data_dir = str(tmp_path / "tfds")
    return config


@pytest.mark.parametrize("encoding", ["alibi", "t5", "shaw", "xpos"])
def test_linear_rejects_logit_encodings(tmp_path, encoding):
    config = enwik8_smoke(tmp_path, f"posenc={encoding}")
    with pytest.raises(ConfigError, match=f"position_encoding='{encoding}'"):
        validate_config(config, device_count=8)


def test_linear_rejects_odd_feature_count(tmp_path):
    config = enwik8_smoke(tmp_path)
    with config.unlocked():
        config.model.favor_num_features = 15
    with pytest.raises(ConfigError, match="favor_num_features=15"):
        validate_config(config, device_count=8)


def test_linear_rejects_attention_dropout(tmp_path):
    config = enwik8_smoke(tmp_path)
    with config.unlocked():
        config.model.attention_dropout_rate = 0.1
    with pytest.raises(ConfigError, match="attention_dropout_rate=0.1"):
        validate_config(config, device_count=8)


def test_linear_rejects_unknown_attention(tmp_path):
    config = enwik8_smoke(tmp_path, "attention=flash")
    with pytest.raises(ConfigError, match="model.attention='flash'"):
        validate_config(config, device_count=8)


def test_enwik8_comparison_runner(tmp_path):
    values = {
        "manual_dir": str(EXCERPT.parent),
        "source_file": EXCERPT.name,
        "data_dir": str(tmp_path / "tfds"),
    }
    results = experiment.run_all(str(tmp_path / "runs"), [0], values, smoke=True)
    assert [r["variant"] for r in results] == list(experiment.VARIANTS)
    for result in results:
        assert 0.0 < result["eval/bits_per_byte"] < 8.5
        assert [step for step, _ in result["curve"]] == [2, 4]
    table = experiment.markdown_table(results)
    assert table.count("\n") == 2 + len(experiment.VARIANTS)
    experiment.plot_curves(results, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_paper_performer_config_shapes():
    """The 12-layer, 768-wide byte-level Performer plans its state on the
    8-device mesh without allocating it."""
    from roformer_jax.train import mesh as mesh_lib
    from roformer_jax.train.optimizer import make_optimizer
    from roformer_jax.train.state import parameter_count, plan_state

    config = enwik8_config.get_config("size=paper")
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    model_config = validate_config(config, device_count=8, vocab_size=256)
    assert model_config.attention == "linear"
    model = LanguageModel(model_config)
    tx, _ = make_optimizer(config.optim, 10)
    layout = plan_state(
        model,
        tx,
        jax.random.PRNGKey(0),
        mesh_lib.make_mesh(config.mesh),
        mesh_lib.axis_rules(config.mesh),
        seq_len=config.data.seq_len,
    )
    # 12 layers of 4 * 768^2 + 2 * 768 * 3072 weights, plus biases and norms.
    expected = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    count = parameter_count(layout.abstract.params)
    assert expected < count < expected * 1.02


def test_evaluation_uses_the_training_draw(tmp_path):
    """With redraws every 2 steps, evaluation after steps 1 and 2 uses the
    draw of period 0 and after step 3 the draw of period 1."""
    from roformer_jax.train.trainer import _global_batch, setup

    run = setup(enwik8_smoke(tmp_path), str(tmp_path / "run"))
    batch = _global_batch(next(iter(run.data.eval_batches())), run.mesh)
    params = run.state.params
    after = {
        step: float(run.steps.evaluate(params, batch, jnp.int32(step))["loss_sum"])
        for step in (1, 2, 3)
    }
    run.checkpointer.close()
    assert after[1] == after[2]
    assert after[3] != after[1]
