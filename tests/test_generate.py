"""Cached decoding, sampling and generation (`roformer_jax.generate`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roformer_jax import generate
from roformer_jax.data.tokenizers import Tokenizer, TokenizerSpec
from roformer_jax.model_config import ModelConfig
from roformer_jax.models import LanguageModel
from roformer_jax.train.inference import codec_from_tokenizer

VOCAB = 40


def causal_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        causal=True,
        pre_layer_norm=True,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        # Wide weights, so logits are far from uniform and steps differ.
        initializer_range=0.3,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return ModelConfig(**values)


def init_params(model, length: int = 8):
    dummy = jnp.zeros((1, length), jnp.int32)
    return model.init(jax.random.PRNGKey(0), dummy, dummy, dummy + 1)["params"]


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def left_padded_batch(length: int, pads: list[int], seed: int = 0):
    """Random `[B, length]` tokens, row b left-padded with pads[b] slots."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (len(pads), length)).astype(np.int32)
    positions = np.zeros_like(tokens)
    segment_ids = np.zeros_like(tokens)
    for row, pad in enumerate(pads):
        tokens[row, :pad] = 0
        positions[row, pad:] = np.arange(length - pad)
        segment_ids[row, pad:] = 1
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids)


# Decoding with the cache.


@functools.partial(jax.jit, static_argnames=("model",))
def full_logits(model, params, tokens, positions, segment_ids):
    return model.apply({"params": params}, tokens, positions, segment_ids)


@functools.partial(jax.jit, static_argnames=("model",))
def decode_step(model, params, cache, tokens, positions, segment_ids):
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        tokens,
        positions,
        segment_ids,
        decode=True,
        mutable=["cache"],
    )
    return logits, variables["cache"]


@pytest.mark.parametrize(
    "encoding", ["rope", "learned", "sinusoidal", "alibi", "t5", "shaw", "xpos"]
)
def test_cached_decoding_equals_full_recomputation(encoding):
    """Prefill 5 slots, feed 2 tokens at once, then 1 at a time: the logits
    of every step equal those of one forward pass over the whole sequence
    at the same slots, within 1e-5 of their largest magnitude. Row 1 is
    left-padded, so its positions differ from its slots."""
    model = LanguageModel(causal_config(position_encoding=encoding))
    params = init_params(model)
    length = 12
    tokens, positions, segment_ids = left_padded_batch(length, pads=[0, 3])
    expected = full_logits(model, params, tokens, positions, segment_ids)
    cache = generate.init_cache(model, batch_size=2, num_slots=length)
    chunks = [(0, 5), (5, 7)] + [(slot, slot + 1) for slot in range(7, length)]
    real = np.asarray(segment_ids, bool)
    for start, end in chunks:
        logits, cache = decode_step(
            model,
            params,
            cache,
            tokens[:, start:end],
            positions[:, start:end],
            segment_ids[:, start:end],
        )
        mask = real[:, start:end]
        error = relative_error(
            np.asarray(logits)[mask], np.asarray(expected[:, start:end])[mask]
        )
        assert error <= 1e-5, (encoding, start, error)


def test_cache_records_how_many_slots_are_filled():
    model = LanguageModel(causal_config())
    params = init_params(model)
    tokens, positions, segment_ids = left_padded_batch(6, pads=[0, 2])
    cache = generate.init_cache(model, batch_size=2, num_slots=10)
    _, cache = decode_step(model, params, cache, tokens, positions, segment_ids)
    assert int(cache["transformer"]["decode_state"]["length"]) == 6
    np.testing.assert_array_equal(
        cache["transformer"]["decode_state"]["positions"][:, :6], positions
    )


def test_decode_rejects_an_encoder():
    model = LanguageModel(causal_config(causal=False))
    dummy = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="model.causal=True"):
        model.init(jax.random.PRNGKey(0), dummy, dummy, dummy + 1, decode=True)


def test_decode_rejects_linear_attention():
    model = LanguageModel(causal_config(attention="linear", favor_num_features=8))
    dummy = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="model.attention='linear'"):
        model.init(jax.random.PRNGKey(0), dummy, dummy, dummy + 1, decode=True)


# Filtering and sampling.


def reference_filter(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """float64 top-k then top-p on one row: True where a token is kept."""
    logits = logits.astype(np.float64)
    keep = np.ones(logits.shape, bool)
    if top_k:
        kth = np.sort(logits)[::-1][top_k - 1]
        keep &= logits >= kth
    if top_p < 1.0:
        masked = np.where(keep, logits, -np.inf)
        probabilities = np.exp(masked - masked.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        mass_before = 0.0
        threshold = None
        for index in order:
            if mass_before >= top_p:
                break
            threshold = masked[index]
            mass_before += probabilities[index]
        keep &= masked >= threshold
    return keep


@pytest.mark.parametrize(
    "top_k, top_p", [(0, 1.0), (1, 1.0), (5, 1.0), (0, 0.5), (0, 0.9), (7, 0.8)]
)
def test_filter_logits_keeps_the_reference_set(top_k, top_p):
    rng = np.random.default_rng(top_k + int(top_p * 10))
    logits = rng.normal(size=(6, 30)).astype(np.float32) * 2.0
    logits[0, :4] = 3.0  # A tie at the top.
    filtered = np.asarray(generate.filter_logits(logits, top_k=top_k, top_p=top_p))
    for row in range(logits.shape[0]):
        expected = reference_filter(logits[row], top_k, top_p)
        np.testing.assert_array_equal(np.isfinite(filtered[row]), expected)


def test_sampling_follows_the_filtered_distribution():
    """20,000 draws: tokens outside top-k/top-p never appear, and each kept
    token's frequency is within 5 standard errors of its renormalised
    probability."""
    logits = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -3.0], np.float32)
    sampling = generate.SamplingConfig(temperature=0.7, top_k=4, top_p=0.9)
    draws = 20_000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    tokens = jax.vmap(
        lambda key: generate.sample_tokens(key, jnp.asarray(logits)[None], sampling)[0]
    )(keys)
    counts = np.bincount(np.asarray(tokens), minlength=logits.size)
    scaled = logits.astype(np.float64) / 0.7
    kept = reference_filter(scaled, 4, 0.9)
    probabilities = np.where(kept, np.exp(scaled - scaled.max()), 0.0)
    probabilities /= probabilities.sum()
    assert counts[~kept].sum() == 0
    frequencies = counts / draws
    bound = 5 * np.sqrt(probabilities * (1 - probabilities) / draws)
    assert np.all(np.abs(frequencies - probabilities)[kept] <= bound[kept])


def test_zero_temperature_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(3), (5, 17))
    tokens = generate.sample_tokens(
        jax.random.PRNGKey(0), logits, generate.SamplingConfig(temperature=0.0)
    )
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), axis=-1))


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("temperature", -1.0), ("top_k", -2), ("top_p", 0.0)],
)
def test_sampling_config_names_the_bad_value(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        generate.SamplingConfig(**{field: value})


# Generation.


def test_left_pad_numbers_each_row_from_zero():
    prompts = generate.left_pad([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(prompts.tokens, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(prompts.positions, [[0, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(prompts.segment_ids, [[1, 1, 1], [0, 0, 1]])


def test_left_pad_rejects_an_empty_prompt():
    with pytest.raises(ValueError, match="Prompt 1 is empty"):
        generate.left_pad([[1], []])


@pytest.mark.parametrize("encoding", ["rope", "learned"])
@pytest.mark.parametrize(
    "sampling",
    [
        generate.SamplingConfig(max_new_tokens=8, temperature=0.0),
        generate.SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=10, top_p=0.9),
    ],
    ids=["greedy", "sampled"],
)
def test_cached_and_uncached_generation_agree(encoding, sampling):
    model = LanguageModel(causal_config(position_encoding=encoding))
    params = init_params(model)
    prompts = generate.left_pad([[3, 4, 5, 6, 7], [8, 9]])
    rng = jax.random.PRNGKey(1)
    cached = generate.generate(model, params, prompts, rng, sampling)
    uncached = generate.generate(model, params, prompts, rng, sampling, use_cache=False)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_array_equal(cached.lengths, [8, 8])


def test_padding_does_not_change_a_row():
    """A prompt generates the same greedy tokens alone and left-padded next
    to a longer prompt."""
    model = LanguageModel(causal_config())
    params = init_params(model)
    sampling = generate.SamplingConfig(max_new_tokens=6, temperature=0.0)
    rng = jax.random.PRNGKey(0)
    alone = generate.generate(model, params, generate.left_pad([[8, 9]]), rng, sampling)
    batched = generate.generate(
        model, params, generate.left_pad([[3, 4, 5, 6, 7], [8, 9]]), rng, sampling
    )
    np.testing.assert_array_equal(batched.tokens[1], alone.tokens[0])


def test_stop_token_ends_a_row():
    """Stopping on row 0's first greedy token: row 0 has length 1 and pads
    after it; the other row runs on until it emits that token."""
    model = LanguageModel(causal_config())
    params = init_params(model)
    prompts = generate.left_pad([[3, 4, 5], [11, 12, 13]])
    rng = jax.random.PRNGKey(0)
    free = generate.generate(
        model,
        params,
        prompts,
        rng,
        generate.SamplingConfig(max_new_tokens=6, temperature=0.0),
    )
    stop = int(free.tokens[0, 0])
    stopped = generate.generate(
        model,
        params,
        prompts,
        rng,
        generate.SamplingConfig(
            max_new_tokens=6, temperature=0.0, stop_tokens=(stop,), pad_id=0
        ),
    )
    assert int(stopped.lengths[0]) == 1
    np.testing.assert_array_equal(stopped.tokens[0, 1:], 0)
    row = np.asarray(free.tokens[1]).tolist()
    expected_length = row.index(stop) + 1 if stop in row else 6
    assert int(stopped.lengths[1]) == expected_length
    np.testing.assert_array_equal(
        stopped.tokens[1, :expected_length], free.tokens[1, :expected_length]
    )


def test_learned_positions_limit_the_length():
    model = LanguageModel(causal_config(position_encoding="learned"))
    params = init_params(model)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate.generate(
            model,
            params,
            generate.left_pad([[1, 2, 3]]),
            jax.random.PRNGKey(0),
            generate.SamplingConfig(max_new_tokens=62),
        )


def test_generate_rejects_a_masked_lm():
    model = LanguageModel(causal_config(causal=False))
    with pytest.raises(ValueError, match="causal"):
        generate.generate(
            model,
            {},
            generate.left_pad([[1, 2]]),
            jax.random.PRNGKey(0),
            generate.SamplingConfig(max_new_tokens=2),
        )


# Fill-mask.

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat"]


def test_fill_mask_matches_the_model_at_each_mask():
    tokenizer = Tokenizer(WORDS, TokenizerSpec(kind="wordpiece"))
    codec = codec_from_tokenizer(tokenizer)
    model = LanguageModel(causal_config(causal=False, vocab_size=len(WORDS)))
    params = init_params(model)
    predictions = generate.fill_mask(
        model, params, codec, "the [MASK] sat on the [MASK]", top_k=3
    )
    ids = [2, 5, 4, 7, 8, 5, 4, 3]  # [CLS] the [MASK] sat on the [MASK] [SEP]
    tokens = jnp.asarray([ids])
    logits = np.asarray(
        model.apply(
            {"params": params},
            tokens,
            jnp.arange(len(ids))[None],
            jnp.ones_like(tokens),
        ),
        np.float64,
    )[0]
    assert [prediction.index for prediction in predictions] == [0, 1]
    for prediction, slot in zip(predictions, [2, 6], strict=True):
        row = logits[slot].copy()
        row[:5] = -np.inf  # Special tokens are never proposed.
        probabilities = np.exp(row - row.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:3]
        assert list(prediction.ids) == best.tolist()
        assert list(prediction.tokens) == [WORDS[i] for i in best]
        np.testing.assert_allclose(
            prediction.probabilities, probabilities[best], rtol=1e-5
        )


def test_fill_mask_needs_a_mask_token():
    tokenizer = Tokenizer(WORDS, TokenizerSpec(kind="wordpiece"))
    model = LanguageModel(causal_config(causal=False, vocab_size=len(WORDS)))
    with pytest.raises(ValueError, match="no mask token"):
        generate.fill_mask(model, {}, codec_from_tokenizer(tokenizer), "the cat")
