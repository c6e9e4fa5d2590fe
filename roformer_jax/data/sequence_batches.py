"""Fixed-shape batches of encoded sentences and sentence pairs.

A pair is laid out as BERT and RoFormer expect: `[CLS] a [SEP] b [SEP]`,
token type 0 up to and including the first `[SEP]` and 1 after it. A batch
is a dict of numpy arrays:

- `inputs`, `positions`, `segment_ids`, `token_types` (int32): `[B, T]`, or
  `[B, C, T]` when each example has C candidate sequences. Segment id 1
  marks real tokens, 0 padding.
- `labels`: `[B]`, int32 class or float32 regression target.
- `weights` (float32): `[B]`, 0 on rows that pad the last evaluation batch.

With `num_shards` n > 1, B is the global batch size and each batch contains only
rows [i * B / n, (i + 1) * B / n) of shard `shard_index` i, as in `windows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from roformer_jax.data.windows import shard_rows


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list, list]:
    """Drop tokens from the end of the longer text until both fit in budget.

    On a tie the token comes off `b`, as in transformers' "longest_first".
    """
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode_pair(
    ids_a: Sequence[int],
    ids_b: Sequence[int] | None,
    *,
    seq_len: int,
    cls_id: int,
    sep_id: int,
) -> tuple[list[int], list[int]]:
    """Lay out one or two token id lists as `[CLS] a [SEP] (b [SEP])`.

    Truncates the longer text first, token by token, so the result has at
    most seq_len tokens. Returns (ids, token types).
    """
    specials = 3 if ids_b is not None else 2
    if seq_len < specials + 1:
        raise ValueError(
            f"seq_len={seq_len} cannot hold the {specials} special tokens and "
            "any text; use data.seq_len of at least 8."
        )
    a, b = _truncate_pair(ids_a, ids_b or [], seq_len - specials)
    ids = [cls_id, *a, sep_id]
    types = [0] * len(ids)
    if ids_b is not None:
        ids += [*b, sep_id]
        types += [1] * (len(b) + 1)
    return ids, types


@dataclasses.dataclass(frozen=True)
class EncodedExamples:
    """Padded token ids of N examples: `tokens` and `token_types` `[N, T]`
    (or `[N, C, T]`), `lengths` `[N]` (or `[N, C]`) and `labels` `[N]`."""

    tokens: np.ndarray
    token_types: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def pad_encoded(
    encoded: Sequence[tuple[list[int], list[int]]], seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad (ids, types) pairs to `[N, seq_len]` arrays; return them and lengths."""
    count = len(encoded)
    tokens = np.full((count, seq_len), pad_id, dtype=np.int32)
    types = np.zeros((count, seq_len), dtype=np.int32)
    lengths = np.zeros(count, dtype=np.int32)
    for row, (ids, token_types) in enumerate(encoded):
        tokens[row, : len(ids)] = ids
        types[row, : len(ids)] = token_types
        lengths[row] = len(ids)
    return tokens, types, lengths


def _layout(tokens, token_types, lengths) -> dict[str, np.ndarray]:
    seq_len = tokens.shape[-1]
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape)
    segment_ids = (positions < lengths[..., None]).astype(np.int32)
    return {
        "inputs": tokens,
        "positions": np.ascontiguousarray(positions),
        "segment_ids": segment_ids,
        "token_types": token_types,
    }


class ShuffledBatches:
    """Training batches that visit every example once per epoch.

    Epoch e uses a permutation seeded by (seed, e), and step s takes rows
    s*B .. s*B+B-1 of the concatenated permutations, so the batch of step s
    depends only on (seed, s) and a resumed run sees the same batches.
    `batch` returns the rows of shard `shard_index` of `num_shards` of them.
    """

    def __init__(
        self,
        examples: EncodedExamples,
        *,
        batch_size: int,
        seed: int,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        if len(examples) == 0:
            raise ValueError("The training split has no examples; check the data.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.shard = shard_rows(
            batch_size, num_shards=num_shards, shard_index=shard_index
        )
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations[epoch] = rng.permutation(len(self.examples))
        return self._permutations[epoch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        count = len(self.examples)
        first = step * self.batch_size
        flat = np.arange(first + self.shard.start, first + self.shard.stop)
        rows = np.array(
            [self._permutation(int(i // count))[i % count] for i in flat],
            dtype=np.int64,
        )
        examples = self.examples
        batch = _layout(
            examples.tokens[rows], examples.token_types[rows], examples.lengths[rows]
        )
        batch["labels"] = examples.labels[rows]
        batch["weights"] = np.ones(len(rows), dtype=np.float32)
        return batch


def ordered_batches(
    examples: EncodedExamples,
    *,
    batch_size: int,
    num_shards: int = 1,
    shard_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield every example once, in order, and fill the last batch with
    copies of example 0 at weight 0 (copies rather than empty rows, because a
    row with no real token would attend to nothing).

    Each batch contains the rows of shard `shard_index` of `num_shards`, and
    every shard yields the same number of batches. The shard is checked at
    the first `next()`.
    """
    shard = shard_rows(batch_size, num_shards=num_shards, shard_index=shard_index)
    count = len(examples)
    for first in range(0, count, batch_size):
        rows = np.arange(first + shard.start, first + shard.stop)
        real = rows < count
        rows = np.where(real, rows, 0)
        batch = _layout(
            examples.tokens[rows], examples.token_types[rows], examples.lengths[rows]
        )
        batch["labels"] = examples.labels[rows]
        batch["weights"] = real.astype(np.float32)
        yield batch
