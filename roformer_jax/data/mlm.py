"""Packed sequences and masked language model (BERT-style) batches.

`pack_documents` turns tokenized documents into rows of `[CLS] piece [SEP]`
pieces, several per row. `MaskedLMBatches` and `masked_eval_batches` mask
those rows for training and evaluation. Every batch is a dict of numpy arrays,
each `[batch_size, seq_len]`:

- `inputs` (int32): tokens after masking.
- `targets` (int32): the original tokens.
- `weights` (float32): 1 at the positions chosen for prediction, else 0.
- `positions` (int32): position within the piece, 0 at its [CLS].
- `segment_ids` (int32): 1, 2, 3, ... for the pieces of a row, 0 on padding.
  Attention should stay within a segment.
- `token_types` (int32): all 0, since a piece is a single sentence.

With `num_shards` n > 1, batch_size B is the global batch size and each batch
contains only rows [i * B / n, (i + 1) * B / n) of shard `shard_index` i, as in
`windows`. Each row is masked by its own generator, so a shard's rows equal
the same rows of the unsharded batch.

Tokenization happens elsewhere, so ids arrive as arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from roformer_jax.data.windows import shard_rows

# Number of special tokens around every piece: [CLS] before, [SEP] after.
NUM_SPECIAL_TOKENS = 2
# Shares of the chosen tokens that become [MASK] and a random token, as in
# BERT. The remaining 10% keep their original token.
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1

# Leading entries of the seed sequences, so the epoch permutations, the
# training masks and the evaluation masks draw from unrelated streams even
# when an epoch, a step and a row share a number.
_EPOCH_STREAM = 0
_TRAIN_MASK_STREAM = 1
_EVAL_MASK_STREAM = 2


@dataclasses.dataclass(frozen=True)
class PackedSequences:
    """Rows of packed `[CLS] piece [SEP]` pieces, each array `[num_rows, seq_len]`.

    Attributes:
      tokens: int32 token ids, `pad_id` on padding.
      positions: int32 position within the piece, 0 at [CLS] and on padding.
      segment_ids: int32 piece number within the row (1, 2, ...), 0 on padding.
      word_starts: bool, True where a word starts. [CLS], [SEP], padding and
        the first token of every piece count as word starts.
      maskable: bool, True on document tokens, False on [CLS], [SEP] and padding.
    """

    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    word_starts: np.ndarray
    maskable: np.ndarray

    def __post_init__(self):
        shape = self.tokens.shape
        if len(shape) != 2:
            raise ValueError(f"tokens must be [num_rows, seq_len], got shape {shape}.")
        for field in dataclasses.fields(self):
            array = getattr(self, field.name)
            if array.shape != shape:
                raise ValueError(
                    f"{field.name} has shape {array.shape}, but tokens has {shape}. "
                    "All arrays of PackedSequences must have the same shape."
                )

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]


# --- Packing ------------------------------------------------------------------


def _as_document(document: np.ndarray, index: int) -> np.ndarray:
    document = np.asarray(document)
    if document.ndim != 1:
        raise ValueError(
            f"Document {index} must be a 1-D array of token ids, got shape "
            f"{document.shape}."
        )
    if document.size and not np.issubdtype(document.dtype, np.integer):
        raise ValueError(
            f"Document {index} must contain integer token ids, got dtype "
            f"{document.dtype}."
        )
    return document.astype(np.int32)


def _as_word_starts(flags: np.ndarray, index: int, length: int) -> np.ndarray:
    flags = np.asarray(flags)
    if flags.shape != (length,):
        raise ValueError(
            f"word_starts[{index}] has shape {flags.shape}, but document {index} "
            f"has {length} tokens. Pass one flag per token."
        )
    if flags.size and flags.dtype != np.bool_:
        raise ValueError(
            f"word_starts[{index}] must be a bool array, got dtype {flags.dtype}."
        )
    return flags.astype(bool)


def _split_points(
    word_starts: np.ndarray | None, length: int, max_piece: int
) -> list[int]:
    """Return the start offsets of the pieces of a document of `length` tokens.

    Each piece has at most `max_piece` tokens. With `word_starts`, a piece ends
    before the last word start that keeps it within `max_piece` tokens, so a
    word of at most `max_piece` tokens is never split. A longer word is cut at
    `max_piece` tokens.
    """
    if word_starts is None:
        return list(range(0, length, max_piece))

    boundaries = np.flatnonzero(word_starts)
    starts = [0]
    start = 0
    while length - start > max_piece:
        limit = start + max_piece
        # Last word start in (start, limit]: cutting there keeps whole words.
        candidate = np.searchsorted(boundaries, limit, side="right") - 1
        cut = int(boundaries[candidate]) if candidate >= 0 else start
        if cut <= start:
            cut = limit
        starts.append(cut)
        start = cut
    return starts


def pack_documents(
    documents: Sequence[np.ndarray],
    *,
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int = 0,
    word_starts: Sequence[np.ndarray] | None = None,
) -> PackedSequences:
    """Split documents into `[CLS] piece [SEP]` pieces and pack them into rows.

    Each document is cut into pieces of at most seq_len - 2 tokens. With
    `word_starts` (one bool array per document, True where a word starts), no
    word that fits in a piece is split across pieces. Without it, every token
    is its own word. Pieces are packed greedily in order: a new row starts when
    the next piece does not fit into the current one. Positions restart at 0
    at every [CLS], and segment ids number the pieces of a row 1, 2, ....
    Empty documents are skipped.

    Raises:
      ValueError: seq_len is below 3, there are no documents or no tokens, a
        document is not a 1-D integer array, or word_starts does not have one
        bool array per document of the document's length.
    """
    if seq_len < NUM_SPECIAL_TOKENS + 1:
        raise ValueError(
            f"seq_len must be at least 3 ([CLS], one token, [SEP]), got {seq_len}."
        )
    if len(documents) == 0:
        raise ValueError("documents is empty. Pass at least one tokenized document.")
    if word_starts is not None and len(word_starts) != len(documents):
        raise ValueError(
            f"word_starts has {len(word_starts)} entries, but there are "
            f"{len(documents)} documents. Pass one flag array per document."
        )

    max_piece = seq_len - NUM_SPECIAL_TOKENS
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    for index, document in enumerate(documents):
        tokens = _as_document(document, index)
        if word_starts is None:
            flags = None
        else:
            flags = _as_word_starts(word_starts[index], index, len(tokens))
        if len(tokens) == 0:
            continue
        starts = _split_points(flags, len(tokens), max_piece)
        ends = starts[1:] + [len(tokens)]
        for start, end in zip(starts, ends, strict=True):
            piece_flags = (
                np.ones(end - start, dtype=bool)
                if flags is None
                else flags[start:end].copy()
            )
            # A piece is masked on its own, so it always opens a word, even
            # when it continues a word too long for one piece.
            piece_flags[0] = True
            pieces.append((tokens[start:end], piece_flags))

    if not pieces:
        raise ValueError(
            f"All {len(documents)} documents are empty. Pass at least one token."
        )
    return _pack_pieces(pieces, seq_len, cls_id, sep_id, pad_id)


def _pack_pieces(
    pieces: list[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> PackedSequences:
    # Assign every piece a row and a column offset first, then fill the arrays.
    placements = []
    row, used = 0, 0
    for tokens, _ in pieces:
        width = len(tokens) + NUM_SPECIAL_TOKENS
        if used + width > seq_len:
            row, used = row + 1, 0
        placements.append((row, used))
        used += width
    num_rows = row + 1

    shape = (num_rows, seq_len)
    packed_tokens = np.full(shape, pad_id, dtype=np.int32)
    positions = np.zeros(shape, dtype=np.int32)
    segment_ids = np.zeros(shape, dtype=np.int32)
    word_starts = np.ones(shape, dtype=bool)
    maskable = np.zeros(shape, dtype=bool)

    segment = 0
    previous_row = -1
    for (tokens, flags), (row, offset) in zip(pieces, placements, strict=True):
        segment = segment + 1 if row == previous_row else 1
        previous_row = row
        end = offset + len(tokens) + NUM_SPECIAL_TOKENS
        packed_tokens[row, offset] = cls_id
        packed_tokens[row, offset + 1 : end - 1] = tokens
        packed_tokens[row, end - 1] = sep_id
        positions[row, offset:end] = np.arange(end - offset)
        segment_ids[row, offset:end] = segment
        word_starts[row, offset + 1 : end - 1] = flags
        maskable[row, offset + 1 : end - 1] = True

    return PackedSequences(
        tokens=packed_tokens,
        positions=positions,
        segment_ids=segment_ids,
        word_starts=word_starts,
        maskable=maskable,
    )


# --- Masking ------------------------------------------------------------------


def _as_replacement_ids(replacement_ids) -> np.ndarray:
    ids = np.asarray(replacement_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(
            f"replacement_ids must be a non-empty 1-D array of token ids, got "
            f"shape {ids.shape}."
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"replacement_ids must be integer token ids, got dtype {ids.dtype}."
        )
    return ids.astype(np.int32)


def _check_mask_rate(mask_rate: float) -> None:
    if not 0.0 < mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}.")


def _num_to_mask(num_maskable: np.ndarray, mask_rate: float) -> np.ndarray:
    """Return round(mask_rate * num_maskable) per row, rounding half up, at least 1.

    Rows without maskable tokens get 0.
    """
    counts = np.floor(mask_rate * num_maskable + 0.5).astype(np.int64)
    return np.where(num_maskable > 0, np.maximum(counts, 1), 0)


def _choose_tokens(
    rng: np.random.Generator, maskable: np.ndarray, num_chosen: np.ndarray
) -> np.ndarray:
    """Choose num_chosen[b] maskable positions of each row b uniformly at random."""
    # Ranking random keys is a uniform random order. Keys of 2 put the
    # positions that may not be masked after every maskable one.
    keys = rng.random(maskable.shape)
    keys[~maskable] = 2.0
    order = np.argsort(keys, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(maskable.shape[1])[None, :], axis=1)
    return (ranks < num_chosen[:, None]) & maskable


def _choose_words(
    rng: np.random.Generator,
    maskable: np.ndarray,
    word_starts: np.ndarray,
    num_chosen: np.ndarray,
) -> np.ndarray:
    """Choose whole words per row, up to num_chosen[b] tokens in row b.

    A word is a maskable word-start token and the maskable non-start tokens
    after it. A maskable token right after a non-maskable one (such as [CLS])
    also starts a word. Words are taken in random order and a word that would
    exceed the count is skipped, as `create_masked_lm_predictions` in BERT's
    create_pretraining_data.py does. So a row can get fewer tokens than
    num_chosen[b]. When every word of a row is longer than num_chosen[b], its
    shortest word is taken anyway (where BERT's code masks nothing), so each
    row with a maskable token gets at least one word.

    NOTE: such a row gets more than mask_rate of its tokens masked. A piece
    that is one word too long for a single piece is masked completely.
    """
    previous_maskable = np.zeros_like(maskable)
    previous_maskable[:, 1:] = maskable[:, :-1]
    starts = maskable & (word_starts | ~previous_maskable)
    chosen = np.zeros_like(maskable)

    for row in range(maskable.shape[0]):
        target = int(num_chosen[row])
        if target == 0:
            continue
        word_begin = np.flatnonzero(starts[row])
        # A word ends at the next word start or at the first non-maskable token.
        word_id = np.cumsum(starts[row]) - 1
        word_id[~maskable[row]] = -1
        word_length = np.bincount(word_id[word_id >= 0], minlength=len(word_begin))

        order = rng.permutation(len(word_begin)).tolist()
        count = 0
        for word in order:
            length = int(word_length[word])
            if count + length > target:
                continue
            begin = word_begin[word]
            chosen[row, begin : begin + length] = True
            count += length
            if count == target:
                break
        if count == 0:
            # min keeps the first of equally short words in the random order.
            shortest = min(order, key=lambda word: word_length[word])
            begin = word_begin[shortest]
            chosen[row, begin : begin + word_length[shortest]] = True
    return chosen


def mask_tokens(
    rng: np.random.Generator,
    tokens: np.ndarray,
    *,
    maskable: np.ndarray,
    word_starts: np.ndarray | None = None,
    mask_rate: float = 0.15,
    mask_id: int,
    replacement_ids,
) -> dict[str, np.ndarray]:
    """Apply BERT masking to a `[B, T]` batch of token ids.

    Each row gets round(mask_rate * n) positions for prediction, rounding half
    up, where n is its number of maskable tokens, and at least 1 when n > 0.
    The positions are uniform among the maskable ones. With `word_starts`
    (whole-word masking) whole words are chosen instead, see `_choose_words`,
    which can give a row fewer positions. Each chosen position independently
    becomes `mask_id` with probability 0.8, a token drawn uniformly from
    `replacement_ids` with probability 0.1 (which may equal the original), and
    stays unchanged otherwise.

    Returns:
      `inputs` (int32, the masked tokens), `targets` (int32, the original
      tokens) and `weights` (float32, 1.0 at chosen positions, else 0.0).

    Raises:
      ValueError: shapes differ, an array is not `[B, T]`, mask_rate is not in
        (0, 1], or replacement_ids is not a non-empty 1-D integer array.
    """
    tokens = np.asarray(tokens)
    maskable = np.asarray(maskable)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq_len], got shape {tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    if maskable.shape != tokens.shape:
        raise ValueError(
            f"maskable has shape {maskable.shape}, but tokens has {tokens.shape}."
        )
    if word_starts is not None and np.shape(word_starts) != tokens.shape:
        raise ValueError(
            f"word_starts has shape {np.shape(word_starts)}, but tokens has "
            f"{tokens.shape}."
        )
    _check_mask_rate(mask_rate)
    replacement_ids = _as_replacement_ids(replacement_ids)
    maskable = maskable.astype(bool)

    num_chosen = _num_to_mask(maskable.sum(axis=1), mask_rate)
    if word_starts is None:
        chosen = _choose_tokens(rng, maskable, num_chosen)
    else:
        word_starts = np.asarray(word_starts, dtype=bool)
        chosen = _choose_words(rng, maskable, word_starts, num_chosen)

    action = rng.random(tokens.shape)
    use_mask = chosen & (action < MASK_FRACTION)
    use_random = chosen & (action >= MASK_FRACTION)
    use_random &= action < MASK_FRACTION + RANDOM_FRACTION

    targets = tokens.astype(np.int32)
    inputs = targets.copy()
    inputs[use_mask] = mask_id
    inputs[use_random] = rng.choice(replacement_ids, size=int(use_random.sum()))
    return {
        "inputs": inputs,
        "targets": targets,
        "weights": chosen.astype(np.float32),
    }


# --- Batches ------------------------------------------------------------------


def _check_batch_arguments(
    packed: PackedSequences, batch_size: int, seed: int, mask_rate: float
) -> None:
    if not isinstance(packed, PackedSequences):
        raise TypeError(
            f"packed must be a PackedSequences (from pack_documents), got "
            f"{type(packed).__name__}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if packed.num_rows == 0:
        raise ValueError("packed has no rows. Pack at least one document.")
    _check_mask_rate(mask_rate)


def _masked_rows(
    generators: list[np.random.Generator],
    packed: PackedSequences,
    rows: np.ndarray,
    **masking,
) -> dict[str, np.ndarray]:
    """Mask each of `rows` with its own generator and stack the results."""
    masked = [
        _batch_from_rows(generator, packed, np.array([row]), **masking)
        for generator, row in zip(generators, rows, strict=True)
    ]
    return {key: np.concatenate([row[key] for row in masked]) for key in masked[0]}


def _batch_from_rows(
    rng: np.random.Generator,
    packed: PackedSequences,
    rows: np.ndarray,
    *,
    mask_id: int,
    replacement_ids: np.ndarray,
    mask_rate: float,
    whole_word: bool,
) -> dict[str, np.ndarray]:
    tokens = packed.tokens[rows]
    batch = mask_tokens(
        rng,
        tokens,
        maskable=packed.maskable[rows],
        word_starts=packed.word_starts[rows] if whole_word else None,
        mask_rate=mask_rate,
        mask_id=mask_id,
        replacement_ids=replacement_ids,
    )
    batch["positions"] = packed.positions[rows]
    batch["segment_ids"] = packed.segment_ids[rows]
    batch["token_types"] = np.zeros(tokens.shape, dtype=np.int32)
    return batch


class MaskedLMBatches:
    """Training batches of masked packed rows, every row once per epoch.

    Rows are visited in a random order per epoch, seeded by (seed, epoch).
    Step s uses rows s*B .. s*B + B - 1 of the concatenated epoch orders, so a
    batch can span the end of one epoch and the start of the next. The mask
    of row r of the batch comes from a generator seeded by (seed, s, r). The
    batch of step s therefore depends only on (seed, s), and a resumed run
    gets the same batches as one that never stopped. `batch` returns the rows
    of shard `shard_index` of `num_shards`.
    """

    def __init__(
        self,
        packed: PackedSequences,
        *,
        batch_size: int,
        seed: int,
        mask_id: int,
        replacement_ids,
        mask_rate: float = 0.15,
        whole_word: bool = False,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        _check_batch_arguments(packed, batch_size, seed, mask_rate)
        self.shard = shard_rows(
            batch_size, num_shards=num_shards, shard_index=shard_index
        )
        self.packed = packed
        self.batch_size = batch_size
        self.seed = seed
        self.mask_id = mask_id
        self.replacement_ids = _as_replacement_ids(replacement_ids)
        self.mask_rate = mask_rate
        self.whole_word = whole_word
        # Sequential steps reuse the latest epochs, so a small cache suffices.
        # lru_cache is thread-safe, so a prefetch thread may call `batch` too.
        self._epoch_order = functools.lru_cache(maxsize=4)(self._compute_epoch_order)

    @property
    def num_rows(self) -> int:
        """Number of packed rows, each seen once per epoch."""
        return self.packed.num_rows

    @property
    def tokens_per_batch(self) -> int:
        """batch_size * seq_len, the token positions of a global batch including
        padding."""
        return self.batch_size * self.packed.seq_len

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Return the row order of `epoch`, a read-only permutation of range(num_rows)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}.")
        return self._epoch_order(epoch)

    def _compute_epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _EPOCH_STREAM, epoch])
        order = rng.permutation(self.num_rows)
        order.flags.writeable = False
        return order

    def rows(self, step: int) -> np.ndarray:
        """Return the indices into `packed` of the rows of global batch `step`,
        all shards included."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        flat = step * self.batch_size + np.arange(self.batch_size)
        epochs = flat // self.num_rows
        offsets = flat % self.num_rows
        rows = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            in_epoch = epochs == epoch
            rows[in_epoch] = self.epoch_order(epoch)[offsets[in_epoch]]
        return rows

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Return this shard's rows of the batch of training step `step`."""
        rows = self.rows(step)
        batch_rows = range(self.shard.start, self.shard.stop)
        return _masked_rows(
            [
                np.random.default_rng([self.seed, _TRAIN_MASK_STREAM, step, row])
                for row in batch_rows
            ],
            self.packed,
            rows[self.shard],
            mask_id=self.mask_id,
            replacement_ids=self.replacement_ids,
            mask_rate=self.mask_rate,
            whole_word=self.whole_word,
        )

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield `batch(start_step)`, `batch(start_step + 1)`, ... without end."""
        for step in itertools.count(start_step):
            yield self.batch(step)


def masked_eval_batches(
    packed: PackedSequences,
    *,
    batch_size: int,
    seed: int,
    mask_id: int,
    replacement_ids,
    mask_rate: float = 0.15,
    whole_word: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield masked batches of every row of `packed` once, in order.

    The masks of row i come from a generator seeded by (seed, i), so they are
    the same on every call and for every batch_size. The last batch is padded
    to batch_size with rows of zeros (ids 0, weight 0, segment 0), so every
    batch is `[batch_size, seq_len]` and sum(loss * weights) / sum(weights)
    over all batches is the mean loss per masked token. With `num_shards`,
    each batch contains only the rows of shard `shard_index`, and every shard
    yields the same number of batches.

    Raises:
      ValueError: batch_size is below 1, seed is negative, mask_rate is not in
        (0, 1], replacement_ids is invalid, or the shard is invalid (see
        `shard_rows`).
    """
    _check_batch_arguments(packed, batch_size, seed, mask_rate)
    shard = shard_rows(batch_size, num_shards=num_shards, shard_index=shard_index)
    replacement_ids = _as_replacement_ids(replacement_ids)
    # The checks above run at call time. The generator starts at the first next().
    return _masked_eval_batches(
        packed,
        batch_size=batch_size,
        shard=shard,
        seed=seed,
        mask_id=mask_id,
        replacement_ids=replacement_ids,
        mask_rate=mask_rate,
        whole_word=whole_word,
    )


def _masked_eval_batches(
    packed: PackedSequences,
    *,
    batch_size: int,
    shard: slice,
    seed: int,
    **masking,
) -> Iterator[dict[str, np.ndarray]]:
    num_local_rows = shard.stop - shard.start
    # The dtypes of a masked batch. Padding rows take them too, also in a
    # shard that contains padding only.
    dtypes = {key: np.int32 for key in ("inputs", "targets", "positions")}
    dtypes.update(segment_ids=np.int32, token_types=np.int32, weights=np.float32)
    for first in range(0, packed.num_rows, batch_size):
        stop = min(first + shard.stop, packed.num_rows)
        rows = np.arange(first + shard.start, max(stop, first + shard.start))
        num_padding = num_local_rows - len(rows)
        parts = []
        if len(rows):
            generators = [
                np.random.default_rng([seed, _EVAL_MASK_STREAM, row]) for row in rows
            ]
            parts.append(_masked_rows(generators, packed, rows, **masking))
        if num_padding:
            parts.append(
                {
                    key: np.zeros((num_padding, packed.seq_len), dtype)
                    for key, dtype in dtypes.items()
                }
            )
        yield {key: np.concatenate([part[key] for part in parts]) for key in dtypes}
