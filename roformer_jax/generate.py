"""Autoregressive generation for causal models, with a key/value cache.

Dimension alphabet: B batch, P prompt length, N new tokens, S cache slots
(P + N), V vocabulary.

Prompts are left-padded to a common length P, and each row numbers its own
tokens from position 0, so padding changes neither the positions of a row
nor its output. The prompt fills the first P cache slots in one forward
pass; each later step feeds one token per row, at the row's next position,
into the next slot. The whole loop is one `jax.jit` computation with fixed
shapes: a `lax.while_loop` that stops once every row has emitted a stop
token or N tokens.

`generate(..., use_cache=False)` recomputes the full sequence at every step
instead. It is slower (each step costs a full forward pass over S tokens)
and exists to check the cache: with the same key both give the same tokens.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Settings for drawing tokens from the model's next-token distribution.

    `temperature=0` is greedy decoding (argmax). Otherwise the logits are
    divided by the temperature, cut to the `top_k` most likely tokens
    (0: no cut) and then to the smallest set whose probability reaches
    `top_p` (1.0: no cut), and a token is drawn from what remains.
    Generation of a row ends after it emits a token in `stop_tokens` or
    after `max_new_tokens`; later places hold `pad_id`.
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} must be at least 1."
            )
        if not self.temperature >= 0.0:
            raise ValueError(
                f"temperature={self.temperature} must be >= 0 (0 is greedy)."
            )
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 keeps every token).")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)."
            )
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


@dataclasses.dataclass(frozen=True)
class Prompts:
    """A left-padded batch of prompts: `[B, P]` int32 arrays.

    `segment_ids` is 1 on prompt tokens and 0 on padding; `positions` count
    each row's tokens from 0.
    """

    tokens: Array
    positions: Array
    segment_ids: Array


jax.tree_util.register_dataclass(
    Prompts, data_fields=["tokens", "positions", "segment_ids"], meta_fields=[]
)


def left_pad(
    prompts: Sequence[Sequence[int]], *, pad_id: int = 0, length: int | None = None
) -> Prompts:
    """Left-pad token-id lists to `length` (default: the longest prompt).

    A fixed `length` keeps the shapes, and so the compiled program, the same
    across calls with prompts of different lengths.
    """
    if not prompts:
        raise ValueError("No prompts given; pass at least one list of token ids.")
    lengths = [len(prompt) for prompt in prompts]
    for row, size in enumerate(lengths):
        if size == 0:
            raise ValueError(
                f"Prompt {row} is empty; each prompt needs at least one token "
                "(for example a start-of-text or separator token)."
            )
    width = max(lengths) if length is None else length
    if max(lengths) > width:
        raise ValueError(
            f"A prompt has {max(lengths)} tokens, more than length={width}; "
            "raise length or shorten the prompt."
        )
    tokens = np.full((len(prompts), width), pad_id, dtype=np.int32)
    positions = np.zeros((len(prompts), width), dtype=np.int32)
    segment_ids = np.zeros((len(prompts), width), dtype=np.int32)
    for row, prompt in enumerate(prompts):
        size = len(prompt)
        tokens[row, width - size :] = prompt
        positions[row, width - size :] = np.arange(size)
        segment_ids[row, width - size :] = 1
    return Prompts(
        jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids)
    )


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Set to -inf the `[..., V]` logits outside the top-k and the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability
    reaches `top_p`. It always contains the most likely token. Ties at the
    cut-off are kept.
    """
    logits = logits.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        descending = jnp.sort(logits, axis=-1)[..., ::-1]
        probabilities = jax.nn.softmax(descending, axis=-1)
        # Probability of the tokens strictly more likely than each one.
        before = jnp.cumsum(probabilities, axis=-1) - probabilities
        kept = jnp.where(before < top_p, descending, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_tokens(rng: Array, logits: Array, sampling: SamplingConfig) -> Array:
    """Draw one token per row from `[B, V]` logits: `[B]` int32."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / sampling.temperature
    scaled = filter_logits(scaled, top_k=sampling.top_k, top_p=sampling.top_p)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


def init_cache(model: nn.Module, batch_size: int, num_slots: int):
    """Return an empty key/value cache of `num_slots` slots for `model`.

    Only shapes are traced, so no parameters are initialised.
    """
    dummy = jnp.zeros((batch_size, num_slots), jnp.int32)
    shapes = jax.eval_shape(
        functools.partial(model.init, decode=True),
        jax.random.PRNGKey(0),
        dummy,
        dummy,
        dummy,
    )["cache"]
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)


@dataclasses.dataclass(frozen=True)
class Generated:
    """New tokens `[B, N]` (`pad_id` after a row stops) and their count `[B]`,
    the stop token included."""

    tokens: Array
    lengths: Array


def generate(
    model: nn.Module,
    params,
    prompts: Prompts,
    rng: Array,
    sampling: SamplingConfig,
    *,
    use_cache: bool = True,
) -> Generated:
    """Continue each prompt with up to `sampling.max_new_tokens` tokens.

    `model` is a causal `roformer_jax.models.LanguageModel`. Compiled once
    per model, sampling config and prompt shape.
    """
    config = model.config
    if not config.causal:
        raise ValueError(
            "generate needs a causal language model (model.causal=True); for a "
            "masked LM use fill-mask instead."
        )
    _check_length(model, prompts.tokens.shape[1] + sampling.max_new_tokens)
    run = _generate_cached if use_cache else _generate_uncached
    tokens, lengths = run(model, sampling, params, prompts, rng)
    return Generated(tokens=tokens, lengths=lengths)


def _check_length(model: nn.Module, total: int) -> None:
    config = model.config
    if config.position_encoding == "learned" and total > config.max_position_embeddings:
        raise ValueError(
            f"Prompt length plus max_new_tokens is {total}, beyond the "
            f"{config.max_position_embeddings} learned positions "
            "(model.max_position_embeddings); generate fewer tokens or use a "
            "shorter prompt."
        )


def _record(step, out, lengths, done, token, sampling: SamplingConfig):
    token = jnp.where(done, sampling.pad_id, token)
    out = out.at[:, step].set(token)
    lengths = lengths + jnp.where(done, 0, 1)
    if sampling.stop_tokens:
        stops = jnp.asarray(sampling.stop_tokens, jnp.int32)
        done = done | jnp.isin(token, stops)
    return out, lengths, done, token


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def _generate_cached(model, sampling: SamplingConfig, params, prompts: Prompts, rng):
    batch, prompt_length = prompts.tokens.shape
    steps = sampling.max_new_tokens
    cache = init_cache(model, batch, prompt_length + steps)
    last = jnp.full((batch, 1), prompt_length - 1, jnp.int32)
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        prompts.tokens,
        prompts.positions,
        prompts.segment_ids,
        prediction_positions=last,
        decode=True,
        mutable=["cache"],
    )
    next_positions = prompts.positions[:, -1] + 1

    def cond(carry):
        step, *_, done = carry
        return (step < steps) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, rng, out, lengths, done = carry
        rng, key = jax.random.split(rng)
        token = sample_tokens(key, logits, sampling)
        out, lengths, done, token = _record(step, out, lengths, done, token, sampling)
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            token[:, None],
            (next_positions + step)[:, None],
            jnp.ones((batch, 1), jnp.int32),
            decode=True,
            mutable=["cache"],
        )
        return step + 1, variables["cache"], logits[:, 0], rng, out, lengths, done

    carry = (
        jnp.zeros((), jnp.int32),
        variables["cache"],
        logits[:, 0],
        rng,
        jnp.full((batch, steps), sampling.pad_id, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    *_, out, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return out, lengths


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def _generate_uncached(model, sampling: SamplingConfig, params, prompts: Prompts, rng):
    batch, prompt_length = prompts.tokens.shape
    steps = sampling.max_new_tokens
    new_positions = prompts.positions[:, -1:] + 1 + jnp.arange(steps)[None, :]
    tokens = jnp.concatenate(
        [prompts.tokens, jnp.full((batch, steps), sampling.pad_id, jnp.int32)], axis=1
    )
    positions = jnp.concatenate([prompts.positions, new_positions], axis=1)
    segment_ids = jnp.concatenate(
        [prompts.segment_ids, jnp.zeros((batch, steps), jnp.int32)], axis=1
    )

    def next_logits(tokens, segment_ids, step):
        last = jnp.full((batch, 1), prompt_length - 1 + step, jnp.int32)
        return model.apply(
            {"params": params},
            tokens,
            positions,
            segment_ids,
            prediction_positions=last,
        )[:, 0]

    def cond(carry):
        step, *_, done = carry
        return (step < steps) & ~jnp.all(done)

    def body(carry):
        step, tokens, segment_ids, rng, out, lengths, done = carry
        rng, key = jax.random.split(rng)
        logits = next_logits(tokens, segment_ids, step)
        token = sample_tokens(key, logits, sampling)
        out, lengths, done, token = _record(step, out, lengths, done, token, sampling)
        slot = prompt_length + step
        tokens = tokens.at[:, slot].set(token)
        segment_ids = segment_ids.at[:, slot].set(1)
        return step + 1, tokens, segment_ids, rng, out, lengths, done

    carry = (
        jnp.zeros((), jnp.int32),
        tokens,
        segment_ids,
        rng,
        jnp.full((batch, steps), sampling.pad_id, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    *_, out, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return out, lengths


@dataclasses.dataclass(frozen=True)
class TextCodec:
    """Conversion between a model's text and token ids.

    `prefix_ids` and `suffix_ids` frame a masked-LM input (e.g. [CLS] and
    [SEP]); `mask_id` is the mask token, or None when the model has none.
    """

    encode: Callable[[str], Sequence[int]]
    decode: Callable[[Sequence[int]], str]
    pad_id: int = 0
    unk_id: int | None = None  # The id of text outside the vocabulary.
    mask_id: int | None = None
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    special_ids: frozenset[int] = frozenset()

    def single_token(self, text: str) -> int:
        """The id of `text`, which must encode to exactly one known token."""
        ids = [int(token) for token in self.encode(text)]
        if len(ids) != 1:
            raise ValueError(
                f"Stop text {text!r} encodes to {len(ids)} tokens {ids}; a stop "
                "text must be exactly one token of the vocabulary."
            )
        if ids[0] == self.unk_id:
            raise ValueError(
                f"Stop text {text!r} is not in the vocabulary (it encodes to the "
                "unknown token), so it could never end generation; pick a text "
                "the vocabulary holds."
            )
        return ids[0]

    def unknown_pieces(self, text: str) -> int:
        """Count the tokens of `text` that are the unknown token."""
        if self.unk_id is None:
            return 0
        return sum(int(token) == self.unk_id for token in self.encode(text))


def generate_text(
    model: nn.Module,
    params,
    codec: TextCodec,
    prompts: Sequence[str],
    rng: Array,
    sampling: SamplingConfig,
    *,
    use_cache: bool = True,
) -> list[str]:
    """Continue each text prompt; return the generated text of each.

    The stop token, when one ends a row, is not part of the text.
    """
    encoded = [list(codec.encode(prompt)) for prompt in prompts]
    batch = left_pad(encoded, pad_id=codec.pad_id)
    result = generate(model, params, batch, rng, sampling, use_cache=use_cache)
    texts = []
    for row, length in zip(
        np.asarray(result.tokens), np.asarray(result.lengths), strict=True
    ):
        ids = row[:length].tolist()
        if ids and ids[-1] in sampling.stop_tokens:
            ids = ids[:-1]
        texts.append(codec.decode(ids))
    return texts


@dataclasses.dataclass(frozen=True)
class MaskPrediction:
    """The most likely tokens at one mask, best first, with probabilities."""

    index: int  # The mask's place among the text's masks, from 0.
    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    probabilities: tuple[float, ...]


def fill_mask(
    model: nn.Module, params, codec: TextCodec, text: str, *, top_k: int = 5
) -> list[MaskPrediction]:
    """Predict the tokens hidden by each mask token in `text`.

    `model` is a bidirectional (masked) `LanguageModel`; every mask is
    predicted from the same input, not one after another. Probabilities
    exclude the special tokens ([CLS], [MASK], ...) and sum to 1 over the
    rest, so they can differ slightly from a pipeline that keeps them.
    """
    if codec.mask_id is None:
        raise ValueError("This model's vocabulary has no mask token to fill.")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1.")
    ids = [*codec.prefix_ids, *codec.encode(text), *codec.suffix_ids]
    where = [i for i, token in enumerate(ids) if token == codec.mask_id]
    if not where:
        raise ValueError(
            f"{text!r} has no mask token (id {codec.mask_id}); write the mask "
            "token, e.g. [MASK], where a word should be predicted."
        )
    tokens = jnp.asarray([ids], jnp.int32)
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None, :]
    logits = _masked_logits(
        model, params, tokens, positions, jnp.asarray([where], jnp.int32)
    )[0]
    # Special tokens are never predicted, so the probabilities are
    # renormalised over the other tokens.
    special = jnp.asarray(sorted(codec.special_ids), jnp.int32)
    logits = logits.at[:, special].set(-jnp.inf) if codec.special_ids else logits
    probabilities = jax.nn.softmax(logits, axis=-1)
    top_k = min(top_k, probabilities.shape[-1] - len(codec.special_ids))
    top_probabilities, top_ids = jax.lax.top_k(probabilities, top_k)
    predictions = []
    for index, (row_ids, row_probabilities) in enumerate(
        zip(
            np.asarray(top_ids).tolist(),
            np.asarray(top_probabilities).tolist(),
            strict=True,
        )
    ):
        predictions.append(
            MaskPrediction(
                index=index,
                tokens=tuple(codec.decode([token]) for token in row_ids),
                ids=tuple(row_ids),
                probabilities=tuple(row_probabilities),
            )
        )
    return predictions


@functools.partial(jax.jit, static_argnames=("model",))
def _masked_logits(model, params, tokens, positions, prediction_positions):
    return model.apply(
        {"params": params},
        tokens,
        positions,
        jnp.ones_like(tokens),
        prediction_positions=prediction_positions,
    )
