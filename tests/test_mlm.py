"""Tests for roformer_jax.data.mlm: packing, BERT masking and batch sources."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from roformer_jax.data.mlm import (
    MaskedLMBatches,
    PackedSequences,
    mask_tokens,
    masked_eval_batches,
    pack_documents,
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
# Document tokens and replacement ids are disjoint ranges, so an input token
# shows whether it was masked, replaced at random or kept.
DOCUMENT_IDS = (5, 100)
REPLACEMENT_IDS = np.arange(100, 200)
BATCH_KEYS = ("inputs", "targets", "weights", "positions", "segment_ids", "token_types")
INT_KEYS = ("inputs", "targets", "positions", "segment_ids", "token_types")


def _random_documents(seed, num_documents, max_length, start_probability=0.6):
    """Return documents and word-start flags, the first token of each a start."""
    rng = np.random.default_rng(seed)
    documents, word_starts = [], []
    for _ in range(num_documents):
        length = int(rng.integers(1, max_length + 1))
        documents.append(rng.integers(*DOCUMENT_IDS, size=length))
        flags = rng.random(length) < start_probability
        flags[0] = True
        word_starts.append(flags)
    return documents, word_starts


def _segments(packed, row):
    """Return (start, end) column ranges of the segments of `row`, in order."""
    segment_ids = packed.segment_ids[row]
    spans = []
    for segment in np.unique(segment_ids[segment_ids > 0]).tolist():
        columns = np.flatnonzero(segment_ids == segment)
        spans.append((int(columns[0]), int(columns[-1]) + 1))
    return spans


def _pieces(packed):
    """Return the pieces (tokens between [CLS] and [SEP]) in row-major order."""
    pieces = []
    for row in range(packed.num_rows):
        for start, end in _segments(packed, row):
            pieces.append(packed.tokens[row, start + 1 : end - 1])
    return pieces


def _word_spans(flags):
    """Return (start, end) of each word: a start flag and the non-starts after it."""
    starts = np.flatnonzero(flags).tolist() + [len(flags)]
    return list(zip(starts[:-1], starts[1:], strict=True))


@pytest.fixture(scope="module")
def corpus():
    return _random_documents(seed=7, num_documents=120, max_length=90)


@pytest.fixture(scope="module")
def packed_words(corpus):
    documents, word_starts = corpus
    return pack_documents(
        documents, seq_len=32, cls_id=CLS, sep_id=SEP, word_starts=word_starts
    )


# --- pack_documents ------------------------------------------------------------


def test_pack_small_example():
    packed = pack_documents(
        [np.array([10, 11, 12]), np.array([13, 14]), np.array([15])],
        seq_len=6,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=9,
    )

    # Widths with [CLS] and [SEP] are 5, 4 and 3, and no two fit in 6 tokens.
    assert packed.tokens.shape == (3, 6)
    assert packed.tokens[0].tolist() == [CLS, 10, 11, 12, SEP, 9]
    assert packed.tokens[1].tolist() == [CLS, 13, 14, SEP, 9, 9]
    assert packed.tokens[2].tolist() == [CLS, 15, SEP, 9, 9, 9]
    assert packed.positions[0].tolist() == [0, 1, 2, 3, 4, 0]
    assert packed.segment_ids[1].tolist() == [1, 1, 1, 1, 0, 0]
    assert packed.maskable[2].tolist() == [False, True, False, False, False, False]


def test_pack_two_pieces_share_row():
    packed = pack_documents(
        [np.array([10, 11]), np.array([12])], seq_len=8, cls_id=CLS, sep_id=SEP
    )

    assert packed.tokens.tolist() == [[CLS, 10, 11, SEP, CLS, 12, SEP, PAD]]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert packed.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2, 0]]


def test_pack_array_types(packed_words):
    assert isinstance(packed_words, PackedSequences)
    for name in ("tokens", "positions", "segment_ids"):
        assert getattr(packed_words, name).dtype == np.int32, name
    assert packed_words.word_starts.dtype == np.bool_
    assert packed_words.maskable.dtype == np.bool_
    assert packed_words.tokens.shape[1] == 32


def test_pack_rows_start_with_cls(packed_words):
    assert np.all(packed_words.tokens[:, 0] == CLS)
    assert np.all(packed_words.segment_ids[:, 0] == 1)


def test_pack_segment_structure(packed_words):
    for row in range(packed_words.num_rows):
        segment_ids = packed_words.segment_ids[row]
        used = int(np.count_nonzero(segment_ids))
        spans = _segments(packed_words, row)

        # Segments are 1, 2, ... from the left, and padding only at the end.
        assert np.all(segment_ids[:used] > 0), row
        assert np.all(segment_ids[used:] == 0), row
        assert np.all(np.diff(segment_ids[:used]) >= 0), row
        assert [segment_ids[start] for start, _ in spans] == list(
            range(1, len(spans) + 1)
        ), row
        assert spans[-1][1] == used, row
        for start, end in spans:
            assert packed_words.tokens[row, start] == CLS, (row, start)
            assert packed_words.tokens[row, end - 1] == SEP, (row, end)
            assert np.array_equal(
                packed_words.positions[row, start:end], np.arange(end - start)
            ), (row, start)


def test_pack_padding(packed_words):
    padding = packed_words.segment_ids == 0

    assert np.any(padding)
    assert np.all(packed_words.tokens[padding] == PAD)
    assert np.all(packed_words.positions[padding] == 0)
    assert not np.any(packed_words.maskable[padding])


def test_pack_maskable_only_document_tokens(packed_words):
    expected = np.zeros_like(packed_words.maskable)
    for row in range(packed_words.num_rows):
        for start, end in _segments(packed_words, row):
            expected[row, start + 1 : end - 1] = True

    assert np.array_equal(packed_words.maskable, expected)
    assert not np.any(np.isin(packed_words.tokens[packed_words.maskable], [CLS, SEP]))


def test_pack_tokens_once_in_order(corpus, packed_words):
    documents, _ = corpus
    unpacked = packed_words.tokens[packed_words.maskable]

    assert np.array_equal(unpacked, np.concatenate(documents))


def test_pack_pieces_within_documents(corpus, packed_words):
    documents, _ = corpus
    pieces = _pieces(packed_words)
    piece_ends = set(np.cumsum([len(piece) for piece in pieces]).tolist())
    document_ends = set(np.cumsum([len(doc) for doc in documents]).tolist())

    # A piece never spans two documents, so every document end is a piece end.
    assert document_ends <= piece_ends
    assert max(len(piece) for piece in pieces) <= 32 - 2


def test_pack_rows_filled_greedily(packed_words):
    for row in range(packed_words.num_rows - 1):
        used = int(np.count_nonzero(packed_words.segment_ids[row]))
        next_spans = _segments(packed_words, row + 1)
        first_width = next_spans[0][1] - next_spans[0][0]

        assert used + first_width > 32, row


def test_pack_whole_words_kept(corpus, packed_words):
    documents, word_starts = corpus
    max_piece = 32 - 2
    flags = np.concatenate(word_starts)
    piece_ends = np.cumsum([len(piece) for piece in _pieces(packed_words)])
    document_ends = set(np.cumsum([len(doc) for doc in documents]).tolist())

    # Offsets of words longer than a piece, which may be cut anywhere inside.
    long_word_interior = set()
    offset = 0
    for document_flags in word_starts:
        for start, end in _word_spans(document_flags):
            if end - start > max_piece:
                long_word_interior.update(range(offset + start + 1, offset + end))
        offset += len(document_flags)

    cuts_checked = 0
    for cut in piece_ends[:-1].tolist():
        if cut in document_ends or cut in long_word_interior:
            continue
        cuts_checked += 1
        assert flags[cut], cut
    assert cuts_checked > 20


def test_pack_long_word_split():
    tokens = np.arange(10, 27)
    flags = np.zeros(17, dtype=bool)
    flags[[0, 11, 14]] = True  # words of 11, 3 and 3 tokens

    packed = pack_documents(
        [tokens], seq_len=7, cls_id=CLS, sep_id=SEP, word_starts=[flags]
    )
    pieces = [piece.tolist() for piece in _pieces(packed)]

    # Pieces hold at most 5 tokens. The long word is cut after 5 and 10 tokens,
    # and the cut after that falls between the two 3-token words.
    assert pieces == [
        [10, 11, 12, 13, 14],
        [15, 16, 17, 18, 19],
        [20, 21, 22, 23],
        [24, 25, 26],
    ]


def test_pack_word_moved_to_next_piece():
    flags = np.array([1, 0, 0, 1, 0, 0], dtype=bool)

    packed = pack_documents(
        [np.arange(10, 16)], seq_len=6, cls_id=CLS, sep_id=SEP, word_starts=[flags]
    )
    pieces = [piece.tolist() for piece in _pieces(packed)]

    assert pieces == [[10, 11, 12], [13, 14, 15]]


def test_pack_without_word_starts():
    documents, _ = _random_documents(seed=3, num_documents=40, max_length=50)

    packed = pack_documents(documents, seq_len=16, cls_id=CLS, sep_id=SEP)
    pieces = _pieces(packed)

    assert np.array_equal(packed.tokens[packed.maskable], np.concatenate(documents))
    assert np.all(packed.word_starts)
    # Without word boundaries every piece but a document's last is full.
    assert sum(len(piece) < 14 for piece in pieces) <= len(documents)


def test_pack_skips_empty_documents():
    packed = pack_documents(
        [np.array([], dtype=np.int32), np.array([10])],
        seq_len=4,
        cls_id=CLS,
        sep_id=SEP,
    )

    assert packed.tokens.tolist() == [[CLS, 10, SEP, PAD]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 2}, "seq_len must be at least 3"),
        ({"documents": []}, "documents is empty"),
        ({"documents": [np.array([], dtype=np.int32)]}, "empty"),
        ({"documents": [np.ones((2, 2), dtype=np.int32)]}, "1-D"),
        ({"documents": [np.array([1.5])]}, "integer"),
        ({"word_starts": [np.ones(3, dtype=bool)]}, "word_starts has 1 entries"),
        (
            {"word_starts": [np.ones(3, dtype=bool), np.ones(3, dtype=bool)]},
            "document 1 has 2 tokens",
        ),
        (
            {"word_starts": [np.ones(3, dtype=bool), np.ones(2, dtype=np.int32)]},
            "bool",
        ),
    ],
)
def test_pack_invalid_inputs(kwargs, message):
    arguments = {
        "documents": [np.array([10, 11, 12]), np.array([13, 14])],
        "seq_len": 8,
        "cls_id": CLS,
        "sep_id": SEP,
    }
    arguments.update(kwargs)
    documents = arguments.pop("documents")

    with pytest.raises(ValueError, match=message):
        pack_documents(documents, **arguments)


# --- mask_tokens ------------------------------------------------------------------


def _expected_counts(num_maskable, rate=0.15):
    """Round half up, at least 1 for rows with a maskable token."""
    counts = [math.floor(rate * n + 0.5) for n in num_maskable]
    return np.array(
        [max(c, 1) if n > 0 else 0 for c, n in zip(counts, num_maskable, strict=True)]
    )


@pytest.fixture(scope="module")
def masked_packed():
    """A packed batch of 500 rows and one token-level masking of it."""
    documents, word_starts = _random_documents(
        seed=11, num_documents=900, max_length=90
    )
    packed = pack_documents(
        documents, seq_len=64, cls_id=CLS, sep_id=SEP, word_starts=word_starts
    )
    packed = PackedSequences(
        **{
            field.name: getattr(packed, field.name)[:500]
            for field in dataclasses.fields(packed)
        }
    )
    batch = mask_tokens(
        np.random.default_rng(0),
        packed.tokens,
        maskable=packed.maskable,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )
    return packed, batch


def test_mask_output_types(masked_packed):
    packed, batch = masked_packed

    assert set(batch) == {"inputs", "targets", "weights"}
    assert batch["inputs"].dtype == np.int32
    assert batch["targets"].dtype == np.int32
    assert batch["weights"].dtype == np.float32
    assert batch["inputs"].shape == packed.tokens.shape


def test_mask_targets_are_originals(masked_packed):
    packed, batch = masked_packed

    assert np.array_equal(batch["targets"], packed.tokens)


def test_mask_count_per_row(masked_packed):
    packed, batch = masked_packed
    num_maskable = packed.maskable.sum(axis=1)
    chosen = batch["weights"].sum(axis=1)

    assert np.array_equal(chosen, _expected_counts(num_maskable.tolist()))
    assert set(np.unique(batch["weights"]).tolist()) == {0.0, 1.0}


def test_mask_fraction_near_rate(masked_packed):
    packed, batch = masked_packed
    num_maskable = packed.maskable.sum(axis=1)
    # Rows with 4 or more maskable tokens get round(0.15 * n), which is at most
    # 0.5 from 0.15 * n. Rows with fewer get the minimum of 1 instead.
    rows = num_maskable >= 4
    num_rows = int(rows.sum())
    total = int(num_maskable[rows].sum())

    fraction = batch["weights"][rows].sum() / total

    assert num_rows > 450
    assert abs(fraction - 0.15) <= 0.5 * num_rows / total


def test_mask_never_specials(masked_packed):
    packed, batch = masked_packed

    assert not np.any(batch["weights"][~packed.maskable])
    assert np.array_equal(
        batch["inputs"][~packed.maskable], packed.tokens[~packed.maskable]
    )


def test_mask_unchosen_unchanged(masked_packed):
    packed, batch = masked_packed
    unchosen = batch["weights"] == 0

    assert np.array_equal(batch["inputs"][unchosen], packed.tokens[unchosen])


def test_mask_80_10_10_split(masked_packed):
    _, batch = masked_packed
    chosen = batch["weights"] == 1
    inputs = batch["inputs"][chosen]
    num_chosen = inputs.size

    masked = np.mean(inputs == MASK)
    replaced = np.mean(np.isin(inputs, REPLACEMENT_IDS))
    kept = np.mean(inputs == batch["targets"][chosen])

    # Each chosen token is an independent draw, so each fraction is a binomial
    # proportion. With 5 standard deviations, a false failure of one of the three
    # checks is about 2e-6 likely (normal approximation).
    assert num_chosen > 3000
    for observed, probability in ((masked, 0.8), (replaced, 0.1), (kept, 0.1)):
        sigma = math.sqrt(probability * (1 - probability) / num_chosen)
        assert abs(observed - probability) < 5 * sigma, (observed, probability)
    assert masked + replaced + kept == pytest.approx(1.0)


def test_mask_replacements_uniform(masked_packed):
    _, batch = masked_packed
    replaced = batch["inputs"][np.isin(batch["inputs"], REPLACEMENT_IDS)]
    counts = np.bincount(replaced - REPLACEMENT_IDS[0], minlength=len(REPLACEMENT_IDS))

    assert stats.chisquare(counts).pvalue > 1e-4


def test_mask_positions_uniform():
    # Every row has the same 60 maskable columns, so each column is chosen in
    # a row with probability 9 / 60 = 0.15, independently across rows.
    num_rows, seq_len = 2000, 64
    maskable = np.zeros((num_rows, seq_len), dtype=bool)
    maskable[:, 2:62] = True
    tokens = np.full((num_rows, seq_len), 50)

    batch = mask_tokens(
        np.random.default_rng(1),
        tokens,
        maskable=maskable,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )
    column_counts = batch["weights"].sum(axis=0)

    sigma = math.sqrt(num_rows * 0.15 * 0.85)
    assert np.all(column_counts[~maskable[0]] == 0)
    # 5 sigma per column: a false failure among 60 columns is about 3e-5 likely.
    assert np.all(np.abs(column_counts[maskable[0]] - num_rows * 0.15) < 5 * sigma)


def test_mask_minimum_one():
    tokens = np.array([[CLS, 50, 51, SEP, PAD], [CLS, SEP, PAD, PAD, PAD]])
    maskable = np.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)

    batch = mask_tokens(
        np.random.default_rng(0),
        tokens,
        maskable=maskable,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )

    # 0.15 * 2 rounds to 0, but a row with maskable tokens gets at least one.
    assert batch["weights"][0].sum() == 1
    assert batch["weights"][1].sum() == 0


def test_mask_rate_one_masks_all():
    tokens = np.array([[CLS, 50, 51, 52, SEP]])
    maskable = np.array([[0, 1, 1, 1, 0]], dtype=bool)

    batch = mask_tokens(
        np.random.default_rng(0),
        tokens,
        maskable=maskable,
        mask_rate=1.0,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )

    assert np.array_equal(batch["weights"][0], maskable[0].astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask_rate": 0.0}, "mask_rate"),
        ({"mask_rate": 1.5}, "mask_rate"),
        ({"replacement_ids": np.array([], dtype=np.int32)}, "replacement_ids"),
        ({"replacement_ids": np.array([1.0, 2.0])}, "replacement_ids"),
        ({"maskable": np.ones((2, 3), dtype=bool)}, "maskable has shape"),
        ({"word_starts": np.ones((1, 4), dtype=bool)}, "word_starts has shape"),
    ],
)
def test_mask_invalid_inputs(kwargs, message):
    arguments = {
        "maskable": np.ones((2, 4), dtype=bool),
        "mask_id": MASK,
        "replacement_ids": REPLACEMENT_IDS,
    }
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=message):
        mask_tokens(np.random.default_rng(0), np.full((2, 4), 50), **arguments)


# --- whole-word masking ---------------------------------------------------------


def _word_spans_in_row(packed, row):
    """Return (start, end) spans of the words of `row`, computed from the flags.

    A word starts at a maskable token flagged as a start or right after a
    non-maskable token, and runs over the following maskable non-starts.
    """
    spans = []
    maskable = packed.maskable[row]
    flags = packed.word_starts[row]
    column = 0
    while column < len(maskable):
        if not maskable[column]:
            column += 1
            continue
        end = column + 1
        while end < len(maskable) and maskable[end] and not flags[end]:
            end += 1
        spans.append((column, end))
        column = end
    return spans


@pytest.fixture(scope="module")
def whole_word_masked(masked_packed):
    packed, _ = masked_packed
    batch = mask_tokens(
        np.random.default_rng(5),
        packed.tokens,
        maskable=packed.maskable,
        word_starts=packed.word_starts,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )
    return packed, batch


def test_whole_word_never_partial(whole_word_masked):
    packed, batch = whole_word_masked
    words_checked = 0
    for row in range(packed.num_rows):
        for start, end in _word_spans_in_row(packed, row):
            weights = batch["weights"][row, start:end]
            assert np.all(weights == weights[0]), (row, start, end)
            words_checked += end - start > 1
    assert words_checked > 1000


def test_whole_word_count_near_target(whole_word_masked):
    packed, batch = whole_word_masked
    expected = _expected_counts(packed.maskable.sum(axis=1).tolist())
    chosen = batch["weights"].sum(axis=1)

    fitting_rows = []
    for row in range(packed.num_rows):
        lengths = [end - start for start, end in _word_spans_in_row(packed, row)]
        if not lengths:
            assert chosen[row] == 0, row
        elif min(lengths) <= expected[row]:
            # A word that would exceed the count is skipped.
            assert chosen[row] <= expected[row], row
            fitting_rows.append(row)
        else:
            # No word fits, so the shortest whole word is chosen.
            assert chosen[row] == min(lengths), row
    # Skipping reaches the count whenever the remaining words can fill it. With
    # 60% of tokens starting a word, that held for every row here (measured).
    assert len(fitting_rows) > 450
    assert np.sum(chosen[fitting_rows]) == np.sum(expected[fitting_rows])


def test_whole_word_specials_unchosen(whole_word_masked):
    packed, batch = whole_word_masked

    assert not np.any(batch["weights"][~packed.maskable])
    assert np.array_equal(batch["targets"], packed.tokens)


def test_whole_word_longer_than_count():
    # One 6-token word: 0.15 * 6 rounds to 1, and no word fits in 1 token,
    # so the whole word is chosen rather than none or part of it.
    tokens = np.array([[CLS, 50, 51, 52, 53, 54, 55, SEP]])
    maskable = np.array([[0, 1, 1, 1, 1, 1, 1, 0]], dtype=bool)
    flags = np.array([[1, 1, 0, 0, 0, 0, 0, 1]], dtype=bool)

    batch = mask_tokens(
        np.random.default_rng(0),
        tokens,
        maskable=maskable,
        word_starts=flags,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
    )

    assert batch["weights"][0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_whole_word_shortest_when_none_fits():
    # Words of 4 and 2 tokens, and 0.15 * 6 rounds to 1, so no word fits and
    # the shorter word is chosen whatever the random order.
    tokens = np.array([[CLS, 50, 51, 52, 53, 54, 55, SEP]])
    maskable = np.array([[0, 1, 1, 1, 1, 1, 1, 0]], dtype=bool)
    flags = np.array([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=bool)

    for seed in range(10):
        batch = mask_tokens(
            np.random.default_rng(seed),
            tokens,
            maskable=maskable,
            word_starts=flags,
            mask_id=MASK,
            replacement_ids=REPLACEMENT_IDS,
        )
        assert batch["weights"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0], seed


def test_whole_word_piece_after_cls():
    # A token right after [CLS] starts a word even when its flag is False.
    tokens = np.array([[CLS, 50, 51, SEP, CLS, 52, 53, SEP]])
    maskable = np.array([[0, 1, 1, 0, 0, 1, 1, 0]], dtype=bool)
    flags = np.array([[1, 0, 0, 1, 1, 0, 0, 1]], dtype=bool)

    for seed in range(20):
        batch = mask_tokens(
            np.random.default_rng(seed),
            tokens,
            maskable=maskable,
            word_starts=flags,
            mask_id=MASK,
            replacement_ids=REPLACEMENT_IDS,
        )
        weights = batch["weights"][0].tolist()
        assert weights in (
            [0, 1, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 1, 0],
        ), seed


# --- MaskedLMBatches ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_packed():
    """37 rows with distinct contents, so a row can be found by its tokens."""
    documents = [np.arange(10 + 5 * i, 15 + 5 * i) for i in range(37)]
    return pack_documents(documents, seq_len=8, cls_id=CLS, sep_id=SEP)


def _row_index(packed):
    return {row.tobytes(): index for index, row in enumerate(packed.tokens)}


def _make_batches(packed, **kwargs):
    arguments = {
        "batch_size": 8,
        "seed": 3,
        "mask_id": MASK,
        "replacement_ids": REPLACEMENT_IDS,
    }
    arguments.update(kwargs)
    return MaskedLMBatches(packed, **arguments)


def test_batches_shapes_and_types(small_packed):
    batches = _make_batches(small_packed)
    batch = batches.batch(0)

    assert set(batch) == set(BATCH_KEYS)
    for key in BATCH_KEYS:
        assert batch[key].shape == (8, 8), key
    for key in INT_KEYS:
        assert batch[key].dtype == np.int32, key
    assert batch["weights"].dtype == np.float32
    assert np.all(batch["token_types"] == 0)
    assert batches.num_rows == 37
    assert batches.tokens_per_batch == 64


def test_batches_match_packed_rows(small_packed):
    rows = _row_index(small_packed)
    batch = _make_batches(small_packed).batch(2)

    for targets, positions, segment_ids in zip(
        batch["targets"], batch["positions"], batch["segment_ids"], strict=True
    ):
        row = rows[targets.tobytes()]
        assert np.array_equal(positions, small_packed.positions[row])
        assert np.array_equal(segment_ids, small_packed.segment_ids[row])


def test_batches_deterministic(small_packed):
    first = _make_batches(small_packed).batch(5)
    batches = _make_batches(small_packed)
    batches.batch(9)
    again = batches.batch(5)
    fresh = _make_batches(small_packed).batch(5)

    for key in BATCH_KEYS:
        assert np.array_equal(first[key], again[key]), key
        assert np.array_equal(first[key], fresh[key]), key


def test_batches_depend_on_seed_and_step(small_packed):
    batches = _make_batches(small_packed)
    other_seed = _make_batches(small_packed, seed=4)

    assert not np.array_equal(batches.batch(1)["targets"], batches.batch(2)["targets"])
    assert not np.array_equal(
        batches.batch(1)["targets"], other_seed.batch(1)["targets"]
    )


def test_batches_cover_each_epoch(small_packed):
    rows = _row_index(small_packed)
    batches = _make_batches(small_packed)
    num_epochs = 3
    num_steps = -(-num_epochs * 37 // 8)

    order = []
    for step in range(num_steps):
        order.extend(rows[row.tobytes()] for row in batches.batch(step)["targets"])
    epochs = [order[i * 37 : (i + 1) * 37] for i in range(num_epochs)]

    for epoch in epochs:
        assert sorted(epoch) == list(range(37))
    assert epochs[0] != epochs[1]
    assert epochs[0] != list(range(37))


def test_batches_iterate_matches_batch(small_packed):
    batches = _make_batches(small_packed)
    iterator = batches.iterate(start_step=4)

    for step in (4, 5):
        assert np.array_equal(next(iterator)["inputs"], batches.batch(step)["inputs"])


def test_batches_masks_vary_by_step(small_packed):
    batches = _make_batches(small_packed, batch_size=37)

    # With batch_size == num_rows, steps 0 and 1 are two whole epochs, so the
    # same rows are masked independently.
    first, second = batches.batch(0), batches.batch(1)
    first_order = np.argsort([row.tobytes() for row in first["targets"]])
    second_order = np.argsort([row.tobytes() for row in second["targets"]])

    assert not np.array_equal(
        first["weights"][first_order], second["weights"][second_order]
    )


def test_batches_whole_word(packed_words):
    batches = MaskedLMBatches(
        packed_words,
        batch_size=16,
        seed=0,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
        whole_word=True,
    )
    rows = _row_index(packed_words)
    batch = batches.batch(0)

    for targets, weights in zip(batch["targets"], batch["weights"], strict=True):
        row = rows[targets.tobytes()]
        for start, end in _word_spans_in_row(packed_words, row):
            assert np.all(weights[start:end] == weights[start]), (row, start)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"mask_rate": 0.0}, "mask_rate"),
        ({"replacement_ids": np.array([], dtype=np.int32)}, "replacement_ids"),
    ],
)
def test_batches_invalid_arguments(small_packed, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _make_batches(small_packed, **kwargs)


def test_batches_negative_step(small_packed):
    with pytest.raises(ValueError, match="step must be non-negative"):
        _make_batches(small_packed).batch(-1)


# --- masked_eval_batches ----------------------------------------------------------


def _eval(packed, batch_size, seed=0):
    return list(
        masked_eval_batches(
            packed,
            batch_size=batch_size,
            seed=seed,
            mask_id=MASK,
            replacement_ids=REPLACEMENT_IDS,
        )
    )


def test_eval_covers_rows_in_order(small_packed):
    batches = _eval(small_packed, batch_size=8)
    targets = np.concatenate([batch["targets"] for batch in batches])
    segment_ids = np.concatenate([batch["segment_ids"] for batch in batches])

    assert len(batches) == 5
    assert np.array_equal(targets[:37], small_packed.tokens)
    assert np.array_equal(segment_ids[:37], small_packed.segment_ids)


def test_eval_padding_rows(small_packed):
    last = _eval(small_packed, batch_size=8)[-1]

    # 37 = 4 * 8 + 5, so the last batch has 5 rows and 3 padding rows.
    assert np.all(last["weights"][5:] == 0)
    assert np.all(last["segment_ids"][5:] == 0)
    assert np.all(last["weights"][:5].sum(axis=1) > 0)


def test_eval_fixed_shapes(small_packed):
    for batch in _eval(small_packed, batch_size=8):
        assert set(batch) == set(BATCH_KEYS)
        for key in BATCH_KEYS:
            assert batch[key].shape == (8, 8), key
        for key in INT_KEYS:
            assert batch[key].dtype == np.int32, key


def test_eval_masks_fixed(small_packed):
    first = _eval(small_packed, batch_size=8)
    second = _eval(small_packed, batch_size=8)
    other_size = _eval(small_packed, batch_size=5)
    other_seed = _eval(small_packed, batch_size=8, seed=1)

    def stacked(batches, key):
        return np.concatenate([batch[key] for batch in batches])[:37]

    for key in ("inputs", "weights"):
        assert np.array_equal(stacked(first, key), stacked(second, key)), key
        assert np.array_equal(stacked(first, key), stacked(other_size, key)), key
    assert not np.array_equal(stacked(first, "weights"), stacked(other_seed, "weights"))


def test_eval_weights_on_maskable(small_packed):
    batches = _eval(small_packed, batch_size=8)
    weights = np.concatenate([batch["weights"] for batch in batches])[:37]

    assert not np.any(weights[~small_packed.maskable])
    assert np.array_equal(
        weights.sum(axis=1), _expected_counts(small_packed.maskable.sum(axis=1))
    )


def test_eval_invalid_arguments_raise_at_call(small_packed):
    with pytest.raises(ValueError, match="batch_size"):
        masked_eval_batches(
            small_packed,
            batch_size=0,
            seed=0,
            mask_id=MASK,
            replacement_ids=REPLACEMENT_IDS,
        )
