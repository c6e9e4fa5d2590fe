"""Tests of per-position evaluation and passkey retrieval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roformer_jax.data.vocab import CharVocab
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.train import length_eval

FILLER = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def tiny_model():
    vocab = CharVocab.from_text(FILLER + "0123456789?RW")
    config = ModelConfig(
        vocab_size=vocab.size,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=32,
        causal=True,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    model = LanguageModel(config)
    tokens = jnp.zeros((1, 8), jnp.int32)
    positions = jnp.arange(8)[None]
    params = model.init(jax.random.PRNGKey(0), tokens, positions, jnp.ones_like(tokens))
    return vocab, model, params["params"]


def test_loss_by_position_mean_is_weighted(tiny_model):
    vocab, model, params = tiny_model
    tokens = vocab.encode(FILLER[:203])
    result = length_eval.loss_by_position(
        model, params, tokens, seq_len=32, batch_size=4
    )
    assert result.position_loss.shape == (32,)
    # 202 targets: six full windows of 32 and one of 10.
    weights = np.full(32, 6.0)
    weights[:10] += 1
    expected = float(np.sum(result.position_loss * weights) / weights.sum())
    assert result.mean_loss == pytest.approx(expected, rel=1e-6)


def test_passkey_prompt_layout(tiny_model):
    vocab, _, _ = tiny_model
    prompts = length_eval.passkey_prompts(
        vocab, FILLER, length=200, num_trials=4, seed=0
    )
    assert prompts.tokens.shape == (4, 200)
    for row, answer in zip(prompts.tokens, prompts.answers, strict=True):
        text = vocab.decode(row)
        key = vocab.decode(answer)
        assert text.endswith("The pass key is ")
        assert f"The pass key is {key}. Remember it." in text
        assert key.isdigit()


def test_passkey_spelled_without_digits():
    vocab = CharVocab.from_text(FILLER + "?RW")
    prompts = length_eval.passkey_prompts(
        vocab, FILLER, length=300, num_trials=2, seed=1
    )
    for answer in prompts.answers:
        words = vocab.decode(answer[answer != 0]).split(" ")
        assert len(words) == 3
        assert all(word in length_eval._DIGIT_WORDS for word in words)


def test_passkey_prompt_too_short_rejected(tiny_model):
    vocab, _, _ = tiny_model
    with pytest.raises(ValueError, match="no room for filler"):
        length_eval.passkey_prompts(vocab, FILLER, length=40, num_trials=1, seed=0)


class _ConstantModel:
    """Stands in for a model that always predicts one token id."""

    def __init__(self, token: int, vocab_size: int):
        self.token, self.vocab_size = token, vocab_size

    def apply(self, variables, tokens, positions, segment_ids):
        del variables, positions, segment_ids
        logits = jax.nn.one_hot(jnp.full(tokens.shape, self.token), self.vocab_size)
        return logits


def test_passkey_accuracy_counts_exact_answers(tiny_model):
    vocab, _, _ = tiny_model
    prompts = length_eval.passkey_prompts(
        vocab, FILLER, length=120, num_trials=3, seed=2
    )
    seven = int(vocab.encode("7")[0])
    all_sevens = length_eval.PasskeyPrompts(
        tokens=prompts.tokens, answers=np.full_like(prompts.answers, seven)
    )
    model = _ConstantModel(seven, vocab.size)
    assert length_eval.passkey_accuracy(model, None, all_sevens) == 1.0
    mixed = all_sevens.answers.copy()
    mixed[0, 1] = int(vocab.encode("3")[0])
    partly = length_eval.PasskeyPrompts(tokens=prompts.tokens, answers=mixed)
    assert length_eval.passkey_accuracy(model, None, partly) == pytest.approx(2 / 3)
