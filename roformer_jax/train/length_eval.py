"""Length extrapolation: loss per position at several lengths, and passkey
retrieval, for a trained causal language model.

Both take a model and its parameters, so a caller can evaluate the trained
parameters under another `ModelConfig` (for example a RoPE rescaling that was
off during training) without retraining.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from roformer_jax.data.vocab import CharVocab
from roformer_jax.data.windows import eval_batches
from roformer_jax.models import LanguageModel


@dataclasses.dataclass(frozen=True)
class LengthResult:
    """Validation loss of windows of one length."""

    seq_len: int
    mean_loss: float  # Nats per token over every target.
    position_loss: np.ndarray  # [seq_len] mean loss at each window position.


def _position_sums(model: LanguageModel, params, batch):
    logits = model.apply(
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
    )
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    weights = batch["weights"]
    return jnp.sum(losses * weights, axis=0), jnp.sum(weights, axis=0)


def loss_by_position(
    model: LanguageModel, params, tokens: np.ndarray, *, seq_len: int, batch_size: int
) -> LengthResult:
    """Evaluate contiguous windows of `seq_len` tokens over `tokens`."""
    sums = jax.jit(lambda p, b: _position_sums(model, p, b))
    loss_total = np.zeros(seq_len)
    weight_total = np.zeros(seq_len)
    for batch in eval_batches(tokens, seq_len=seq_len, batch_size=batch_size):
        loss, weight = jax.device_get(sums(params, batch))
        loss_total += loss
        weight_total += weight
    position_loss = loss_total / np.maximum(weight_total, 1.0)
    mean_loss = float(loss_total.sum() / max(weight_total.sum(), 1.0))
    return LengthResult(
        seq_len=seq_len, mean_loss=mean_loss, position_loss=position_loss
    )


_DIGIT_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)


def _spell(key: str, vocab: CharVocab) -> str:
    """Write the key in digits if the vocabulary has them, else in words."""
    if all(vocab.encode(digit)[0] != 0 for digit in "0123456789"):
        return key
    return " ".join(_DIGIT_WORDS[int(digit)] for digit in key)


def _needle_and_question(key: str) -> tuple[str, str]:
    return (
        f" The pass key is {key}. Remember it. ",
        " What is the pass key? The pass key is ",
    )


def passkey_min_length(vocab: CharVocab, digits: int = 3) -> int:
    """Return the shortest prompt length that leaves room for filler."""
    needle, question = _needle_and_question(_spell("8" * digits, vocab))
    return len(needle) + len(question) + 1


@dataclasses.dataclass(frozen=True)
class PasskeyPrompts:
    """Prompts `[num_trials, length]` ending right before the key's answer."""

    tokens: np.ndarray
    answers: np.ndarray  # [num_trials, answer_length]


def passkey_prompts(
    vocab: CharVocab,
    filler: str,
    *,
    length: int,
    num_trials: int,
    seed: int,
    digits: int = 3,
) -> PasskeyPrompts:
    """Hide a random number in filler text and end with a request for it.

    The sentence "The pass key is K. Remember it." goes at a random depth of a
    `length`-character prompt made of `filler`, which ends with "The pass key
    is " so that the model's next characters should be K.
    """
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for _ in range(num_trials):
        key = _spell("".join(str(d) for d in rng.integers(0, 10, size=digits)), vocab)
        needle, question = _needle_and_question(key)
        room = length - len(needle) - len(question)
        if room < 1:
            raise ValueError(
                f"A passkey prompt of {length} characters has no room for filler; "
                f"use a length above {len(needle) + len(question)}."
            )
        start = int(rng.integers(0, len(filler) - room))
        text = filler[start : start + room]
        depth = int(rng.integers(0, room + 1))
        prompt = text[:depth] + needle + text[depth:] + question
        prompts.append(vocab.encode(prompt))
        answers.append(vocab.encode(key))
    width = max(len(answer) for answer in answers)
    answer_array = np.zeros((num_trials, width), np.int32)
    for row, answer in enumerate(answers):
        answer_array[row, : len(answer)] = answer
    return PasskeyPrompts(tokens=np.stack(prompts), answers=answer_array)


def passkey_accuracy(model: LanguageModel, params, prompts: PasskeyPrompts) -> float:
    """Greedy-decode the answer and return the fraction decoded exactly.

    The prompt and the answer share one fixed-shape buffer, so each decoding
    step reuses one compiled forward pass; later, unfilled slots are padding,
    which a causal model cannot see.
    """
    trials, length = prompts.tokens.shape
    answer_length = prompts.answers.shape[1]
    total = length + answer_length
    tokens = np.zeros((trials, total), np.int32)
    tokens[:, :length] = prompts.tokens
    positions = np.tile(np.arange(total, dtype=np.int32), (trials, 1))
    segments = np.ones((trials, total), np.int32)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t, positions, segments))
    for offset in range(answer_length):
        logits = forward(params, tokens)
        tokens[:, length + offset] = np.asarray(
            jnp.argmax(logits[:, length + offset - 1], -1)
        )
    decoded = tokens[:, length:]
    real = prompts.answers != 0
    correct = np.all((decoded == prompts.answers) | ~real, axis=1)
    return float(np.mean(correct))
