"""Task heads, sequence batches, masked-LM prediction gathering, loading a
pre-trained encoder, and the pre-train then fine-tune path end to end."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune as finetune_config
from configs import mlm_pretrain
from roformer_jax.data.sequence_batches import (
    EncodedExamples,
    ShuffledBatches,
    encode_pair,
    ordered_batches,
)
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel, MultipleChoice, SequenceClassifier
from roformer_jax.train import metrics as metrics_lib
from roformer_jax.train import tasks
from roformer_jax.train.pretrained import PretrainedMismatchError
from roformer_jax.train.text_inputs import gather_predictions, max_predictions
from roformer_jax.train.trainer import setup, train_and_evaluate

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WIKI = next((DATA / "enwiki_excerpt").glob("*.bz2"))
CAIL = DATA / "cail2019_scm" / "input.txt"
GLUE = DATA / "glue"


def tiny_model(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        type_vocab_size=2,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    values.update(overrides)
    return ModelConfig(**values)


def random_inputs(batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(5, 50, (batch, length)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return tokens, positions, jnp.ones_like(tokens)


# Heads.


def test_classifier_output_shape():
    model = SequenceClassifier(tiny_model(), num_outputs=3)
    tokens, positions, segments = random_inputs(4, 10)
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    logits = model.apply(params, tokens, positions, segments)
    assert logits.shape == (4, 3)
    assert logits.dtype == jnp.float32


def test_multiple_choice_scores_each_candidate():
    """Candidate c of a [B, C, T] batch gets the score a one-output
    classifier with the same parameters gives that sequence alone."""
    config = tiny_model()
    choice = MultipleChoice(config)
    single = SequenceClassifier(config, num_outputs=1)
    tokens, positions, segments = random_inputs(6, 12)
    params = choice.init(jax.random.PRNGKey(1), tokens, positions, segments)
    scores = choice.apply(
        params,
        tokens.reshape(3, 2, 12),
        positions.reshape(3, 2, 12),
        segments.reshape(3, 2, 12),
    )
    alone = single.apply(params, tokens, positions, segments)
    assert scores.shape == (3, 2)
    np.testing.assert_allclose(scores.reshape(-1), alone[:, 0], rtol=1e-5, atol=1e-6)


def test_classifier_ignores_padding_tokens():
    model = SequenceClassifier(tiny_model(), num_outputs=2)
    tokens, positions, _ = random_inputs(1, 10)
    segments = jnp.asarray([[1] * 6 + [0] * 4])
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    other = tokens.at[:, 6:].set(7)
    first = model.apply(params, tokens, positions, segments)
    second = model.apply(params, other, positions, segments)
    np.testing.assert_allclose(first, second, rtol=1e-6)


def test_lm_prediction_positions_gather_logits():
    model = LanguageModel(tiny_model())
    tokens, positions, segments = random_inputs(2, 9)
    params = model.init(jax.random.PRNGKey(0), tokens, positions, segments)
    full = model.apply(params, tokens, positions, segments)
    chosen = jnp.asarray([[1, 4, 8], [0, 0, 5]], jnp.int32)
    gathered = model.apply(params, tokens, positions, segments, None, chosen)
    expected = np.take_along_axis(np.asarray(full), np.asarray(chosen)[..., None], 1)
    np.testing.assert_allclose(gathered, expected, rtol=1e-5, atol=1e-6)


# Losses and evaluation outputs.


def test_regression_loss_is_weighted_squared_error():
    task = tasks.ClassificationTask(num_classes=0, metric_names=("pearson",))
    outputs = jnp.asarray([0.5, 2.0, -1.0])
    batch = {
        "labels": jnp.asarray([1.0, 2.5, 3.0]),
        "weights": jnp.asarray([1.0, 1.0, 0.0]),
    }
    sums = task.loss_sums(outputs, batch)
    assert float(sums["loss_sum"]) == pytest.approx(0.25 + 0.25)
    assert float(sums["weight_sum"]) == 2.0


def test_classification_summary_drops_padding_rows():
    task = tasks.ClassificationTask(num_classes=2, metric_names=("accuracy", "f1"))
    collected = tasks.collect_eval_outputs(
        [
            {
                "loss_sum": 1.0,
                "weight_sum": 2.0,
                "predictions": np.array([1, 0]),
                "labels": np.array([1, 1]),
                "weights": np.array([1.0, 1.0]),
            },
            {
                "loss_sum": 0.5,
                "weight_sum": 1.0,
                "predictions": np.array([1, 0]),
                "labels": np.array([1, 1]),
                "weights": np.array([1.0, 0.0]),
            },
        ]
    )
    summary = task.summarize(collected)
    assert summary["eval/examples"] == 3
    assert summary["eval/accuracy"] == pytest.approx(2 / 3)
    assert summary["eval/f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert summary["eval/loss"] == pytest.approx(1.5 / 3)


# Sequence batches.


def test_encode_pair_layout():
    ids, types = encode_pair([10, 11], [20], seq_len=16, cls_id=2, sep_id=3)
    assert ids == [2, 10, 11, 3, 20, 3]
    assert types == [0, 0, 0, 0, 1, 1]


def test_encode_pair_truncates_longer_text_first():
    ids, _ = encode_pair(list(range(100, 110)), [7, 8], seq_len=9, cls_id=2, sep_id=3)
    assert len(ids) == 9
    assert ids == [2, 100, 101, 102, 103, 3, 7, 8, 3]


def test_encode_pair_rejects_tiny_length():
    with pytest.raises(ValueError, match="seq_len=3"):
        encode_pair([1], [2], seq_len=3, cls_id=2, sep_id=3)


def _examples(count: int, length: int = 6) -> EncodedExamples:
    tokens = np.arange(count * length, dtype=np.int32).reshape(count, length)
    return EncodedExamples(
        tokens=tokens,
        token_types=np.zeros_like(tokens),
        lengths=np.full(count, length - 2, dtype=np.int32),
        labels=np.arange(count, dtype=np.int32),
    )


def test_shuffled_batches_cover_each_epoch():
    batches = ShuffledBatches(_examples(12), batch_size=4, seed=3)
    first_epoch = np.concatenate([batches.batch(step)["labels"] for step in range(3)])
    second_epoch = np.concatenate(
        [batches.batch(step)["labels"] for step in range(3, 6)]
    )
    assert sorted(first_epoch) == list(range(12))
    assert sorted(second_epoch) == list(range(12))
    assert not np.array_equal(first_epoch, second_epoch)


def test_shuffled_batches_depend_on_step_only():
    first = ShuffledBatches(_examples(10), batch_size=4, seed=1).batch(7)
    second = ShuffledBatches(_examples(10), batch_size=4, seed=1).batch(7)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert first["segment_ids"][0].tolist() == [1, 1, 1, 1, 0, 0]


def test_ordered_batches_pad_with_zero_weight():
    batches = list(ordered_batches(_examples(5), batch_size=4))
    assert len(batches) == 2
    assert batches[1]["weights"].tolist() == [1.0, 0.0, 0.0, 0.0]
    labels = np.concatenate([b["labels"][b["weights"] > 0] for b in batches])
    assert labels.tolist() == [0, 1, 2, 3, 4]
    # Padding rows repeat a real example, so no row attends to nothing.
    assert batches[1]["segment_ids"].sum(axis=1).min() > 0


def test_gather_predictions_keeps_masked_targets():
    targets = np.arange(20, dtype=np.int32).reshape(2, 10)
    weights = np.zeros((2, 10), np.float32)
    weights[0, [1, 5]] = 1.0
    weights[1, [0, 2, 9]] = 1.0
    gathered = gather_predictions({"targets": targets, "weights": weights}, 4)
    assert gathered["prediction_positions"].tolist() == [[1, 5, 0, 0], [0, 2, 9, 0]]
    assert gathered["weights"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert gathered["targets"][1, :3].tolist() == [10, 12, 19]


def test_max_predictions_leaves_room():
    assert max_predictions(128, 0.15) >= round(0.15 * 128) + 1
    assert max_predictions(4, 0.9) == 4


# Configs at full size: sharded shapes on the 8-device mesh, without memory.


@pytest.mark.parametrize(
    "size,vocab,expected_millions",
    [("bert_base", 30522, 110), ("roformer_chinese_base", 50000, 124)],
)
def test_base_configs_lower_on_fake_mesh(size, vocab, expected_millions):
    from roformer_jax.train import mesh as mesh_lib
    from roformer_jax.train.optimizer import make_optimizer
    from roformer_jax.train.state import parameter_count, plan_state
    from roformer_jax.train.steps import make_steps
    from roformer_jax.train.validation import validate_config

    config = mlm_pretrain.get_config(f"size={size}")
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
        config.data.seq_len = config.model.max_position_embeddings
        config.data.global_batch_size = 8
    model_config = validate_config(config, device_count=8, vocab_size=vocab)
    mesh = mesh_lib.make_mesh(config.mesh)
    task = tasks.LanguageModelTask("masked_lm")
    model = task.build_model(model_config)
    tx, schedule = make_optimizer(config.optim, 10)
    layout = plan_state(
        model,
        tx,
        jax.random.PRNGKey(0),
        mesh,
        mesh_lib.axis_rules(config.mesh),
        seq_len=config.data.seq_len,
    )
    millions = parameter_count(layout.abstract.params) / 1e6
    assert abs(millions - expected_millions) < 2
    kernel = layout.abstract.params["transformer"]["layer_0"]["attention"]["query"][
        "kernel"
    ]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    steps = make_steps(task, model, tx, schedule, layout.shardings, mesh, 0)
    batch_size, length = 8, config.data.seq_len
    predictions = max_predictions(length, config.data.mask_rate)
    batch = {
        "inputs": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
        "positions": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
        "segment_ids": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
        "token_types": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
        "targets": jax.ShapeDtypeStruct((batch_size, predictions), jnp.int32),
        "weights": jax.ShapeDtypeStruct((batch_size, predictions), jnp.float32),
        "prediction_positions": jax.ShapeDtypeStruct(
            (batch_size, predictions), jnp.int32
        ),
    }
    lowered = steps.train.lower(layout.abstract, batch)
    assert "dot_general" in lowered.as_text()


# Pre-training then fine-tuning, end to end on the offline data.


def smoke_pretrain_config(tmp_path, corpus="wikipedia", **model):
    path = WIKI if corpus == "wikipedia" else CAIL
    config = mlm_pretrain.get_config(f"corpus={corpus},smoke")
    with config.unlocked():
        config.data.corpus_path = str(path)
        config.train.tensorboard = False
        config.model.update(model)
    return config


def smoke_finetune_config(tmp_path, task, init_workdir=None, **model):
    config = finetune_config.get_config(f"task={task},smoke")
    with config.unlocked():
        config.data.manual_dir = str(GLUE)
        config.data.data_dir = str(tmp_path / "tfds")
        config.data.corpus_path = str(CAIL)
        config.train.tensorboard = False
        config.finetune.init_workdir = init_workdir
        config.model.update(model)
    return config


@pytest.fixture(scope="module")
def pretrained_wiki(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlm_wiki")
    config = smoke_pretrain_config(workdir)
    metrics = train_and_evaluate(config, str(workdir))
    return workdir, metrics


def test_pretraining_reports_masked_lm_metrics(pretrained_wiki):
    workdir, metrics = pretrained_wiki
    assert np.isfinite(metrics["eval/loss"])
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0
    assert (workdir / "tokenizer" / "vocab.txt").exists()
    rows = metrics_lib.read_metrics(str(workdir))
    assert any("train/loss" in row for row in rows)


def test_finetune_loads_pretrained_encoder(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    pre_run = setup(smoke_pretrain_config(workdir), str(workdir))
    pre_params = jax.device_get(pre_run.state.params["transformer"])
    pre_run.checkpointer.close()

    config = smoke_finetune_config(tmp_path, "glue/sst2", init_workdir=str(workdir))
    run = setup(config, str(tmp_path / "sst2"))
    loaded = jax.device_get(run.state.params["transformer"])
    run.checkpointer.close()
    for (path, expected), actual in zip(
        jax.tree_util.tree_leaves_with_path(pre_params),
        jax.tree.leaves(loaded),
        strict=True,
    ):
        np.testing.assert_array_equal(actual, expected, err_msg=str(path))
    stored = (tmp_path / "sst2" / "tokenizer" / "vocab.txt").read_text("utf-8")
    assert stored == (workdir / "tokenizer" / "vocab.txt").read_text("utf-8")


def test_finetune_glue_reports_task_metric(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    config = smoke_finetune_config(tmp_path, "glue/mrpc", init_workdir=str(workdir))
    metrics = train_and_evaluate(config, str(tmp_path / "mrpc"))
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0
    assert 0.0 <= metrics["eval/f1"] <= 1.0


def test_finetune_regression_reports_correlations(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    config = smoke_finetune_config(tmp_path, "glue/stsb", init_workdir=str(workdir))
    metrics = train_and_evaluate(config, str(tmp_path / "stsb"))
    assert -1.0 <= metrics["eval/pearson"] <= 1.0
    assert -1.0 <= metrics["eval/spearman"] <= 1.0


def test_finetune_rejects_other_model_size(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    config = smoke_finetune_config(
        tmp_path, "glue/sst2", init_workdir=str(workdir), mlp_dim=48
    )
    with pytest.raises(PretrainedMismatchError, match="intermediate/kernel"):
        setup(config, str(tmp_path / "other"))


def test_finetune_rejects_missing_checkpoint(tmp_path):
    config = smoke_finetune_config(tmp_path, "glue/sst2", init_workdir=str(tmp_path))
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(Exception, match="init_workdir"):
        setup(config, str(tmp_path / "run"))


@pytest.fixture(scope="module")
def pretrained_cail_learned(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlm_cail")
    config = smoke_pretrain_config(
        workdir,
        corpus="cail2019_scm",
        position_encoding="learned",
        max_position_embeddings=32,
    )
    train_and_evaluate(config, str(workdir))
    return workdir


def test_learned_positions_longer_finetune_fails_clearly(
    pretrained_cail_learned, tmp_path
):
    config = smoke_finetune_config(
        tmp_path,
        "cail2019_scm",
        init_workdir=str(pretrained_cail_learned),
        position_encoding="learned",
        max_position_embeddings=64,
    )
    with config.unlocked():
        config.data.seq_len = 64
    with pytest.raises(PretrainedMismatchError, match="extend_position_embeddings"):
        setup(config, str(tmp_path / "run"))


def test_learned_positions_extend_by_tiling(pretrained_cail_learned, tmp_path):
    config = smoke_finetune_config(
        tmp_path,
        "cail2019_scm",
        init_workdir=str(pretrained_cail_learned),
        position_encoding="learned",
        max_position_embeddings=64,
    )
    with config.unlocked():
        config.data.seq_len = 64
        config.finetune.extend_position_embeddings = True
    run = setup(config, str(tmp_path / "run"))
    table = np.asarray(
        run.state.params["transformer"]["embeddings"]["position"]["table"]["embedding"]
    )
    run.checkpointer.close()
    assert table.shape[0] == 64
    np.testing.assert_array_equal(table[32:], table[:32])


def test_cail_matching_trains_longer_than_pretraining(tmp_path):
    """RoPE has no table, so fine-tuning at 2x the pre-training length runs."""
    pre_dir = tmp_path / "pre"
    train_and_evaluate(
        smoke_pretrain_config(pre_dir, corpus="cail2019_scm"), str(pre_dir)
    )
    config = smoke_finetune_config(tmp_path, "cail2019_scm", init_workdir=str(pre_dir))
    with config.unlocked():
        config.data.seq_len = 64
        config.train.eval_max_batches = None
    metrics = train_and_evaluate(config, str(tmp_path / "cail"))
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0
    assert metrics["eval/examples"] == pytest.approx(100)
    saved = json.loads((tmp_path / "cail" / "config.json").read_text("utf-8"))
    assert saved["data"]["seq_len"] == 64


# User-supplied files and tokenizer handling.


def write_reviews(path, rows):
    lines = ["text\tlabel"] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


REVIEWS = [
    ("这部电影非常好看，演员很棒。 A great film.", "pos"),
    ("剧情无聊，浪费时间。 Boring and slow.", "neg"),
    ("I loved every minute of it, 真好!", "pos"),
    ("太差了，不推荐。 Not recommended.", "neg"),
] * 6


def text_file_config(tmp_path, train_rows, **data):
    write_reviews(tmp_path / "train.tsv", train_rows)
    write_reviews(tmp_path / "dev.tsv", REVIEWS[:8])
    config = smoke_finetune_config(tmp_path, "text_file")
    with config.unlocked():
        config.tokenizer.kind = "chinese_char"
        config.tokenizer.vocab_size = 200
        config.tokenizer.min_frequency = 1
        config.data.corpus_path = str(tmp_path / "train.tsv")
        config.data.validation_path = str(tmp_path / "dev.tsv")
        config.data.update(data)
    return config


def test_text_file_classifier_trains_from_scratch(tmp_path):
    config = text_file_config(tmp_path, REVIEWS)
    metrics = train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["eval/examples"] == 8
    assert 0.0 <= metrics["eval/f1"] <= 1.0
    vocab = (tmp_path / "run" / "tokenizer" / "vocab.txt").read_text("utf-8")
    assert "电" in vocab.split("\n")


def test_text_file_bad_row_fails_before_training(tmp_path):
    from roformer_jax.data.text_classification import DataFileError

    config = text_file_config(tmp_path, REVIEWS[:3] + [("", "pos")] + REVIEWS[3:])
    with pytest.raises(DataFileError, match=r"train\.tsv.*line 5") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "skip_invalid_rows" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_text_file_skips_bad_rows_when_asked(tmp_path, caplog):
    config = text_file_config(
        tmp_path, REVIEWS[:3] + [("", "pos")] + REVIEWS[3:], skip_invalid_rows=True
    )
    with caplog.at_level("WARNING"):
        metrics = train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/loss"])
    skipped = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert len(skipped) == 1
    assert skipped[0].startswith("Skipped 1 invalid row in")
    assert "train.tsv" in skipped[0]


def test_resumed_run_keeps_stored_tokenizer(tmp_path):
    config = smoke_pretrain_config(tmp_path, corpus="cail2019_scm")
    train_and_evaluate(config, str(tmp_path))
    first = (tmp_path / "tokenizer" / "vocab.txt").read_text("utf-8")
    with config.unlocked():
        config.tokenizer.vocab_size = 300
        config.train.num_train_steps = 6
    train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "tokenizer" / "vocab.txt").read_text("utf-8") == first


def test_whole_word_masking_with_jieba_words(tmp_path):
    config = smoke_pretrain_config(tmp_path, corpus="cail2019_scm")
    with config.unlocked():
        config.tokenizer.kind = "chinese_word"
        config.tokenizer.vocab_size = 1500
        config.data.whole_word_masking = True
    metrics = train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(metrics["eval/loss"])
    vocab = (tmp_path / "tokenizer" / "vocab.txt").read_text("utf-8").split("\n")
    assert any(len(token) >= 2 and not token.startswith(("[", "##")) for token in vocab)


def test_pretraining_reads_existing_vocab_file(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    config = smoke_pretrain_config(tmp_path)
    with config.unlocked():
        config.tokenizer.vocab_file = str(workdir / "tokenizer" / "vocab.txt")
    train_and_evaluate(config, str(tmp_path / "run"))
    copied = (tmp_path / "run" / "tokenizer" / "vocab.txt").read_text("utf-8")
    assert copied == (workdir / "tokenizer" / "vocab.txt").read_text("utf-8")


def test_mismatch_error_lists_model_fields(pretrained_wiki, tmp_path):
    workdir, _ = pretrained_wiki
    config = smoke_finetune_config(
        tmp_path, "glue/sst2", init_workdir=str(workdir), num_layers=3
    )
    with pytest.raises(PretrainedMismatchError) as error:
        setup(config, str(tmp_path / "other"))
    assert "model.num_layers: pre-training 2, this run 3" in str(error.value)


def test_english_tokenizer_on_chinese_text_warns(pretrained_wiki, tmp_path, caplog):
    workdir, _ = pretrained_wiki
    config = smoke_finetune_config(tmp_path, "cail2019_scm", init_workdir=str(workdir))
    with caplog.at_level("WARNING"):
        run = setup(config, str(tmp_path / "cail"))
    run.checkpointer.close()
    warnings = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
    assert len(warnings) == 1
    assert "corpus=cail2019_scm" in warnings[0]
