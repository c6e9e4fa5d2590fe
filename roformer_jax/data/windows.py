"""Fixed-length windows of a token stream as causal language model batches.

Every batch is a dict of numpy arrays, each `[batch_size, seq_len]`:

- `inputs` (int32): tokens w[:-1] of a window w of seq_len + 1 tokens.
- `targets` (int32): tokens w[1:], so targets[t] is the token after inputs[t].
- `positions` (int32): 0..seq_len-1. Positions are explicit because packed
  batches restart them at every document.
- `segment_ids` (int32): 1 for real input tokens, 0 for padding.
- `weights` (float32): 1 for real targets, 0 for padding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

PAD_ID = 0


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")


def _as_token_array(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}.")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    return tokens.astype(np.int32)


def _positions(batch_size: int, seq_len: int) -> np.ndarray:
    return np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))


class RandomWindows:
    """Training batches of windows that start at uniformly random offsets.

    The batch of step s depends only on (seed, s), so a run resumed at step s
    sees the same batches as one that never stopped.
    """

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int):
        _check_positive("seq_len", seq_len)
        _check_positive("batch_size", batch_size)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        tokens = _as_token_array(tokens)
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"The token stream has {len(tokens)} tokens, but a window of "
                f"seq_len={seq_len} needs seq_len + 1 = {seq_len + 1}. Use a "
                f"seq_len of at most {len(tokens) - 1} or a longer text."
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # Valid starts are 0..num_starts-1, so every window has seq_len + 1 tokens.
        self.num_starts = len(tokens) - seq_len
        self._offsets = np.arange(seq_len + 1)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Return the batch of training step `step` (a non-negative int)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, self.num_starts, size=self.batch_size)
        windows = self.tokens[starts[:, None] + self._offsets]
        shape = (self.batch_size, self.seq_len)
        return {
            "inputs": np.ascontiguousarray(windows[:, :-1]),
            "targets": np.ascontiguousarray(windows[:, 1:]),
            "positions": _positions(self.batch_size, self.seq_len),
            "segment_ids": np.ones(shape, dtype=np.int32),
            "weights": np.ones(shape, dtype=np.float32),
        }

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield `batch(start_step)`, `batch(start_step + 1)`, ... without end."""
        for step in itertools.count(start_step):
            yield self.batch(step)


def eval_batches(
    tokens: np.ndarray, *, seq_len: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches of contiguous, non-overlapping windows over `tokens`.

    Each of the len(tokens) - 1 targets appears in exactly one window with
    weight 1. The last window and the last batch are padded to full shape with
    weight 0 and segment id 0, so every batch is `[batch_size, seq_len]` and
    sum(loss * weights) / sum(weights) over all batches is the mean loss per
    target. Each window starts a fresh context, so the first targets of a
    window are predicted from fewer than seq_len tokens.

    Raises:
      ValueError: seq_len or batch_size is below 1, or tokens has fewer than 2
        tokens (no target to predict).
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    tokens = _as_token_array(tokens)
    if len(tokens) < 2:
        raise ValueError(
            f"Evaluation needs at least 2 tokens (1 target), got {len(tokens)}."
        )
    # The checks above run at call time; the generator starts at the first next().
    return _eval_batches(tokens, seq_len, batch_size)


def _eval_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    num_tokens = len(tokens)
    num_targets = num_tokens - 1
    num_windows = -(-num_targets // seq_len)
    num_batches = -(-num_windows // batch_size)
    padded_windows = num_batches * batch_size

    # Window i covers inputs padded[i*T : (i+1)*T] and targets shifted by one.
    padded = np.full(padded_windows * seq_len + 1, PAD_ID, dtype=np.int32)
    padded[:num_tokens] = tokens
    index = np.arange(padded_windows * seq_len).reshape(padded_windows, seq_len)

    for first in range(0, padded_windows, batch_size):
        rows = index[first : first + batch_size]
        yield {
            "inputs": padded[rows],
            "targets": padded[rows + 1],
            "positions": _positions(batch_size, seq_len),
            "segment_ids": (rows < num_tokens).astype(np.int32),
            "weights": (rows < num_targets).astype(np.float32),
        }
