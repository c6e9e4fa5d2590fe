"""Fixed-length windows of a token stream as causal language model batches.

Every batch is a dict of numpy arrays, each `[batch_size, seq_len]`:

- `inputs` (int32): tokens w[:-1] of a window w of seq_len + 1 tokens.
- `targets` (int32): tokens w[1:], so targets[t] is the token after inputs[t].
- `positions` (int32): 0..seq_len-1. Positions are explicit because packed
  batches restart them at every document.
- `segment_ids` (int32): 1 for real input tokens, 0 for padding.
- `weights` (float32): 1 for real targets, 0 for padding.

With `num_shards` n > 1, a source builds only shard `shard_index` i of every
batch: rows [i * B / n, (i + 1) * B / n) of the batch of B rows that a single
process would build, so each process of a multi-process run loads only its
own rows.
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


def shard_rows(batch_size: int, *, num_shards: int, shard_index: int) -> slice:
    """Return the rows [i * B / n, (i + 1) * B / n) of shard i of n of a batch.

    Raises:
      ValueError: num_shards is below 1, shard_index is outside
        [0, num_shards), or batch_size is not a multiple of num_shards.
    """
    _check_positive("num_shards", num_shards)
    if not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index={shard_index} is outside [0, {num_shards}); pass the "
            f"index of this process's shard, from 0 to num_shards - 1."
        )
    if batch_size % num_shards:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by num_shards={num_shards}, "
            "so the shards would differ in size; use a batch size that is a "
            f"multiple of {num_shards}."
        )
    rows = batch_size // num_shards
    return slice(shard_index * rows, (shard_index + 1) * rows)


def _positions(batch_size: int, seq_len: int) -> np.ndarray:
    return np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))


class RandomWindows:
    """Training batches of windows that start at uniformly random offsets.

    The batch of step s depends only on (seed, s), so a run resumed at step s
    gets the same batches as one that never stopped. `batch_size` is the
    global B; `batch` returns the rows of shard `shard_index` of `num_shards`.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        _check_positive("seq_len", seq_len)
        _check_positive("batch_size", batch_size)
        self.shard = shard_rows(
            batch_size, num_shards=num_shards, shard_index=shard_index
        )
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

    @property
    def local_batch_size(self) -> int:
        """Rows of this shard, batch_size / num_shards."""
        return self.shard.stop - self.shard.start

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Return this shard's rows of the batch of training step `step`."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        rng = np.random.default_rng([self.seed, step])
        # Drawing every row's start keeps each shard's rows equal to the same
        # rows of the unsharded batch; only this shard's windows are gathered.
        starts = rng.integers(0, self.num_starts, size=self.batch_size)[self.shard]
        windows = self.tokens[starts[:, None] + self._offsets]
        shape = (self.local_batch_size, self.seq_len)
        return {
            "inputs": np.ascontiguousarray(windows[:, :-1]),
            "targets": np.ascontiguousarray(windows[:, 1:]),
            "positions": _positions(self.local_batch_size, self.seq_len),
            "segment_ids": np.ones(shape, dtype=np.int32),
            "weights": np.ones(shape, dtype=np.float32),
        }

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield `batch(start_step)`, `batch(start_step + 1)`, ... without end."""
        for step in itertools.count(start_step):
            yield self.batch(step)


def eval_batches(
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    num_shards: int = 1,
    shard_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches of contiguous, non-overlapping windows over `tokens`.

    Each of the len(tokens) - 1 targets appears in exactly one window with
    weight 1. The last window and the last batch are padded to full shape with
    weight 0 and segment id 0, so every batch is `[batch_size, seq_len]` and
    sum(loss * weights) / sum(weights) over all batches is the mean loss per
    target. Each window starts a fresh context, so the first targets of a
    window are predicted from fewer than seq_len tokens. With `num_shards`,
    each batch contains only the rows of shard `shard_index`, and every shard
    yields the same number of batches.

    Raises:
      ValueError: seq_len or batch_size is below 1, the shard is invalid (see
        `shard_rows`), or tokens has fewer than 2 tokens (no target to predict).
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    rows = shard_rows(batch_size, num_shards=num_shards, shard_index=shard_index)
    tokens = _as_token_array(tokens)
    if len(tokens) < 2:
        raise ValueError(
            f"Evaluation needs at least 2 tokens (1 target), got {len(tokens)}."
        )
    # The checks above run at call time; the generator starts at the first next().
    return _eval_batches(tokens, seq_len, batch_size, rows)


def _eval_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, shard: slice
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
        rows = index[first + shard.start : first + shard.stop]
        yield {
            "inputs": padded[rows],
            "targets": padded[rows + 1],
            "positions": _positions(len(rows), seq_len),
            "segment_ids": (rows < num_tokens).astype(np.int32),
            "weights": (rows < num_targets).astype(np.float32),
        }
