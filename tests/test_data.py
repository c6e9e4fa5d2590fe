"""Tests for roformer_jax.data: dataset splits, vocabulary, windows, prefetch."""

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from roformer_jax.data.offline import probe_address
from roformer_jax.data.prefetch import Prefetcher
from roformer_jax.data.tiny_shakespeare import DatasetUnavailableError, load_text_splits
from roformer_jax.data.vocab import UNK_ID, UNK_TOKEN, CharVocab
from roformer_jax.data.windows import PAD_ID, RandomWindows, eval_batches

SHAKESPEARE_DIR = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tiny_shakespeare"
)
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "weights")


# --- Tiny Shakespeare through TFDS -------------------------------------------


class _FileDownloadManager:
    """Stand-in for a TFDS download manager that returns a local file."""

    def __init__(self, path: Path):
        self.path = path

    def download(self, url):
        return str(self.path)


def _closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_proxy(monkeypatch, port: int) -> None:
    """Route HTTP(S) through 127.0.0.1:port so no test reaches another host."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


@pytest.fixture
def offline(monkeypatch):
    """Make any download fail at once: the proxy is a closed loopback port."""
    _use_proxy(monkeypatch, _closed_loopback_port())


@pytest.fixture(scope="module")
def input_text() -> str:
    return (SHAKESPEARE_DIR / "input.txt").read_bytes().decode("utf-8")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepare the dataset once from the local copy; return (data_dir, splits)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    splits = load_text_splits(data_dir=str(data_dir), manual_dir=str(SHAKESPEARE_DIR))
    return data_dir, splits


def test_splits_match_upstream_builder(prepared, tmp_path):
    _, splits = prepared
    upstream = tfds.builder_cls("tiny_shakespeare")(data_dir=str(tmp_path))
    generators = upstream._split_generators(
        _FileDownloadManager(SHAKESPEARE_DIR / "input.txt")
    )
    expected = {str(gen.name): gen.gen_kwargs["split_text"] for gen in generators}

    assert set(splits) == {"train", "validation", "test"}
    assert set(expected) == set(splits)
    for name in splits:
        assert splits[name] == expected[name], name


def test_splits_match_90_5_5(prepared, input_text):
    _, splits = prepared
    train_end = int(len(input_text) * 0.9)
    rest = input_text[train_end:]
    validation_end = int(len(rest) * 0.5)

    assert splits["train"] == input_text[:train_end]
    assert splits["validation"] == rest[:validation_end]
    assert splits["test"] == rest[validation_end:]


def test_splits_cover_file(prepared, input_text):
    _, splits = prepared
    lengths = [len(splits[name]) for name in ("train", "validation", "test")]

    assert len(input_text) == 1_115_394
    assert sum(lengths) == len(input_text)
    assert splits["train"] + splits["validation"] + splits["test"] == input_text
    assert len(set(input_text)) == 65


def test_prepared_in_upstream_layout(prepared):
    data_dir, _ = prepared
    version_dir = data_dir / "tiny_shakespeare" / "1.0.0"

    assert (version_dir / "dataset_info.json").is_file()
    assert list(version_dir.glob("tiny_shakespeare-train.tfrecord-*"))


def test_prepared_reused_offline(prepared, offline):
    data_dir, splits = prepared

    reloaded = load_text_splits(data_dir=str(data_dir), manual_dir=None)

    assert reloaded == splits


def test_missing_input_names_path(tmp_path, offline):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()

    with pytest.raises(FileNotFoundError) as raised:
        load_text_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    assert str(manual_dir / "input.txt") in str(raised.value)
    assert not (tmp_path / "tfds" / "tiny_shakespeare" / "1.0.0").exists()


def test_offline_fails_fast(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as raised:
        load_text_splits(data_dir=str(tmp_path), manual_dir=None)
    elapsed = time.perf_counter() - start

    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    assert "could not be downloaded" in message
    assert "--config.data.manual_dir=DIR" in message
    assert "input.txt" in message
    assert elapsed < 10.0
    assert not (tmp_path / "tiny_shakespeare" / "1.0.0").exists()


def test_download_error_converted(tmp_path, monkeypatch):
    def fail_download(self, url):
        raise requests.exceptions.ConnectionError(f"cannot reach {url}")

    # A listening loopback proxy lets the reachability probe pass, so the
    # error comes from the (patched) TFDS download itself.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _use_proxy(monkeypatch, listener.getsockname()[1])
        monkeypatch.setattr(tfds.download.DownloadManager, "download", fail_download)

        with pytest.raises(DatasetUnavailableError) as raised:
            load_text_splits(data_dir=str(tmp_path), manual_dir=None)

    assert "ConnectionError" in str(raised.value)
    assert "--config.data.manual_dir=DIR" in str(raised.value)
    assert isinstance(raised.value.__cause__, requests.exceptions.ConnectionError)


def test_probe_address_uses_proxy(monkeypatch):
    _use_proxy(monkeypatch, 3128)

    host, port, via_proxy = probe_address("https://example.org/input.txt")

    assert host == "127.0.0.1"
    assert port == 3128
    assert via_proxy


def test_probe_address_without_proxy(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    host, port, via_proxy = probe_address("https://example.org/input.txt")

    assert host == "example.org"
    assert port == 443
    assert not via_proxy


# --- CharVocab ---------------------------------------------------------------


def test_vocab_sorted_ids():
    vocab = CharVocab.from_text("cabbage")

    assert vocab.chars == ["a", "b", "c", "e", "g"]
    assert vocab.size == 6
    assert vocab.encode("abc").tolist() == [1, 2, 3]


def test_vocab_round_trip():
    text = "To be, or not to be: that is the question.\n"
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)

    assert ids.dtype == np.int32
    assert ids.shape == (len(text),)
    assert vocab.decode(ids) == text


def test_vocab_unknown_is_zero():
    vocab = CharVocab.from_text("abc")
    ids = vocab.encode("abzc!")

    assert UNK_ID == 0
    assert ids.tolist() == [1, 2, 0, 3, 0]
    assert vocab.decode(ids) == f"ab{UNK_TOKEN}c{UNK_TOKEN}"


def test_vocab_mixed_cjk():
    text = "RoFormer 使用旋转位置编码 (RoPE)，效果很好。Hello, 世界! 🙂"
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)

    assert vocab.size == len(set(text)) + 1
    assert ids.min() >= 1
    assert ids.max() < vocab.size
    assert vocab.decode(ids) == text
    assert vocab.encode("世界和平").tolist()[2:] == [UNK_ID, UNK_ID]


def test_vocab_shakespeare(input_text):
    vocab = CharVocab.from_text(input_text)

    assert vocab.size == 66
    assert vocab.decode(vocab.encode(input_text)) == input_text


def test_vocab_empty_text():
    vocab = CharVocab.from_text("")

    assert vocab.size == 1
    assert vocab.encode("ab").tolist() == [UNK_ID, UNK_ID]
    assert vocab.decode([]) == ""


def test_vocab_save_load(tmp_path):
    vocab = CharVocab.from_text("Hello, 世界! naïve")
    path = tmp_path / "vocab.json"

    vocab.save(path)
    loaded = CharVocab.load(path)

    assert loaded == vocab
    assert loaded.encode("世界").tolist() == vocab.encode("世界").tolist()
    assert '"世"'.encode() in path.read_bytes()
    assert not (tmp_path / "vocab.json.tmp").exists()


def test_vocab_inequality():
    assert CharVocab.from_text("abc") != CharVocab.from_text("abd")


@pytest.mark.parametrize(
    "content",
    [
        "not json {",
        "[1, 2]",
        json.dumps({"format": "other", "version": 1, "unk_id": 0, "chars": []}),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 2,
                "unk_id": 0,
                "chars": [],
            }
        ),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 1,
                "unk_id": 1,
                "chars": [],
            }
        ),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 1,
                "unk_id": 0,
                "chars": "ab",
            }
        ),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 1,
                "unk_id": 0,
                "chars": ["ab"],
            }
        ),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 1,
                "unk_id": 0,
                "chars": ["a", "a"],
            }
        ),
        json.dumps(
            {
                "format": "roformer_jax.char_vocab",
                "version": 1,
                "unk_id": 0,
                "chars": [7],
            }
        ),
    ],
)
def test_vocab_load_malformed(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ValueError) as raised:
        CharVocab.load(path)

    assert str(path) in str(raised.value)


def test_vocab_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        CharVocab.load(tmp_path / "absent.json")


def test_vocab_decode_out_of_range():
    vocab = CharVocab.from_text("ab")

    with pytest.raises(ValueError, match="outside the vocabulary range"):
        vocab.decode([1, 3])
    with pytest.raises(ValueError, match="outside the vocabulary range"):
        vocab.decode([-1])


# --- RandomWindows -----------------------------------------------------------


def _random_tokens(length: int = 5000, vocab_size: int = 50) -> np.ndarray:
    return (
        np.random.default_rng(0).integers(0, vocab_size, size=length).astype(np.int32)
    )


def _assert_batches_equal(left: dict, right: dict) -> None:
    assert set(left) == set(right)
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def test_random_shapes_dtypes():
    batch = RandomWindows(_random_tokens(), seq_len=16, batch_size=4, seed=0).batch(0)

    assert set(batch) == set(BATCH_KEYS)
    for key in BATCH_KEYS:
        assert batch[key].shape == (4, 16), key
    for key in ("inputs", "targets", "positions", "segment_ids"):
        assert batch[key].dtype == np.int32, key
    assert batch["weights"].dtype == np.float32
    assert (batch["positions"] == np.arange(16)).all()
    assert (batch["segment_ids"] == 1).all()
    assert (batch["weights"] == 1.0).all()


def test_random_same_step_same_batch():
    tokens = _random_tokens()
    first = RandomWindows(tokens, seq_len=16, batch_size=4, seed=3)
    second = RandomWindows(tokens.copy(), seq_len=16, batch_size=4, seed=3)

    _assert_batches_equal(first.batch(11), second.batch(11))
    _assert_batches_equal(first.batch(11), first.batch(11))


def test_random_steps_differ():
    windows = RandomWindows(_random_tokens(), seq_len=16, batch_size=4, seed=3)

    assert not np.array_equal(windows.batch(0)["inputs"], windows.batch(1)["inputs"])


def test_random_seeds_differ():
    tokens = _random_tokens()
    first = RandomWindows(tokens, seq_len=16, batch_size=4, seed=0)
    second = RandomWindows(tokens, seq_len=16, batch_size=4, seed=1)

    assert not np.array_equal(first.batch(0)["inputs"], second.batch(0)["inputs"])


def test_random_targets_shifted():
    batch = RandomWindows(_random_tokens(), seq_len=16, batch_size=8, seed=0).batch(2)

    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])


def test_random_windows_in_range():
    length, seq_len = 300, 16
    windows = RandomWindows(np.arange(length), seq_len=seq_len, batch_size=64, seed=0)

    for step in range(20):
        batch = windows.batch(step)
        starts = batch["inputs"][:, 0]
        # With tokens 0..length-1 each value is its own index, so a window is
        # contiguous exactly when it counts up by one.
        np.testing.assert_array_equal(
            batch["inputs"], starts[:, None] + np.arange(seq_len)
        )
        np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
        assert starts.min() >= 0
        assert starts.max() <= length - seq_len - 1


def test_random_reaches_last_start():
    # 3 tokens and seq_len 2 allow one window only: start 0.
    windows = RandomWindows(np.array([5, 6, 7]), seq_len=2, batch_size=3, seed=0)
    batch = windows.batch(0)

    assert batch["inputs"].tolist() == [[5, 6]] * 3
    assert batch["targets"].tolist() == [[6, 7]] * 3


def test_random_iterate_matches_batch():
    windows = RandomWindows(_random_tokens(), seq_len=8, batch_size=2, seed=5)
    iterator = windows.iterate(7)

    for step in (7, 8, 9):
        _assert_batches_equal(next(iterator), windows.batch(step))


def test_random_text_too_short():
    with pytest.raises(ValueError) as raised:
        RandomWindows(np.arange(10), seq_len=10, batch_size=1, seed=0)

    message = str(raised.value)
    assert "has 10 tokens" in message
    assert "needs seq_len + 1 = 11" in message
    assert "at most 9" in message


@pytest.mark.parametrize("seq_len, batch_size", [(0, 1), (1, 0), (-1, 2)])
def test_window_sizes_invalid(seq_len, batch_size):
    with pytest.raises(ValueError, match="must be at least 1"):
        RandomWindows(_random_tokens(), seq_len=seq_len, batch_size=batch_size, seed=0)
    with pytest.raises(ValueError, match="must be at least 1"):
        eval_batches(_random_tokens(), seq_len=seq_len, batch_size=batch_size)


def test_random_negative_step():
    windows = RandomWindows(_random_tokens(), seq_len=8, batch_size=2, seed=0)

    with pytest.raises(ValueError, match="step must be non-negative"):
        windows.batch(-1)


# --- eval_batches ------------------------------------------------------------


@pytest.mark.parametrize(
    "length, seq_len, batch_size",
    [
        (2, 1, 1),
        (2, 4, 3),
        (33, 8, 2),  # 32 targets: 4 full windows, 2 full batches.
        (34, 8, 2),  # 33 targets: last window has 1 target.
        (100, 7, 3),
        (1000, 16, 5),
    ],
)
def test_eval_covers_targets_once(length, seq_len, batch_size):
    tokens = _random_tokens(length)
    batches = list(eval_batches(tokens, seq_len=seq_len, batch_size=batch_size))
    weights = np.concatenate([batch["weights"].reshape(-1) for batch in batches])
    targets = np.concatenate([batch["targets"].reshape(-1) for batch in batches])
    inputs = np.concatenate([batch["inputs"].reshape(-1) for batch in batches])
    real = weights == 1.0

    for batch in batches:
        for key in BATCH_KEYS:
            assert batch[key].shape == (batch_size, seq_len), key
    assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
    assert weights.sum() == length - 1
    np.testing.assert_array_equal(targets[real], tokens[1:])
    np.testing.assert_array_equal(inputs[real], tokens[:-1])


def test_eval_padding_masked():
    tokens = _random_tokens(30) + 1  # No real token equals PAD_ID.
    batches = list(eval_batches(tokens, seq_len=8, batch_size=3))
    # 29 targets: windows 0..3 (the last with 5 targets), then 2 padding rows.
    last = batches[-1]

    assert len(batches) == 2
    assert last["weights"][0].tolist() == [1.0] * 5 + [0.0] * 3
    assert last["segment_ids"][0].tolist() == [1] * 6 + [0] * 2
    assert (last["inputs"][0, 6:] == PAD_ID).all()
    assert (last["weights"][1:] == 0.0).all()
    assert (last["segment_ids"][1:] == 0).all()
    assert (last["positions"] == np.arange(8)).all()


def test_eval_weighted_mean_exact():
    tokens = _random_tokens(101)
    per_target_loss = np.linspace(0.0, 5.0, 50)  # A made-up loss per target id.
    loss_sum = 0.0
    weight_sum = 0.0
    for batch in eval_batches(tokens, seq_len=9, batch_size=4):
        loss_sum += float((per_target_loss[batch["targets"]] * batch["weights"]).sum())
        weight_sum += float(batch["weights"].sum())

    assert loss_sum / weight_sum == pytest.approx(per_target_loss[tokens[1:]].mean())


def test_eval_too_short():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        eval_batches(np.array([3]), seq_len=4, batch_size=2)


# --- Prefetcher --------------------------------------------------------------


def test_prefetch_matches_direct():
    windows = RandomWindows(_random_tokens(), seq_len=8, batch_size=2, seed=1)
    prefetcher = Prefetcher(windows.batch, start_step=3, buffer_size=2)
    try:
        for expected_step in range(3, 9):
            step, batch = prefetcher.next()
            assert step == expected_step
            _assert_batches_equal(batch, windows.batch(expected_step))
    finally:
        prefetcher.close()


def test_prefetch_propagates_error():
    def make_batch(step):
        if step == 2:
            raise ValueError(f"bad step {step}")
        return {"step": step}

    prefetcher = Prefetcher(make_batch, start_step=0)
    try:
        assert prefetcher.next() == (0, {"step": 0})
        assert prefetcher.next() == (1, {"step": 1})
        with pytest.raises(ValueError, match="bad step 2"):
            prefetcher.next()
        with pytest.raises(ValueError, match="bad step 2"):
            prefetcher.next()
    finally:
        prefetcher.close()


def test_prefetch_records_wait():
    def slow_batch(step):
        time.sleep(0.3)
        return {"step": step}

    prefetcher = Prefetcher(slow_batch, start_step=0)
    try:
        prefetcher.next()
        waited = prefetcher.take_wait_seconds()
        after_reset = prefetcher.wait_seconds
    finally:
        prefetcher.close()

    assert waited >= 0.2
    assert after_reset == 0.0


def test_prefetch_no_wait_when_ready():
    prefetcher = Prefetcher(lambda step: {"step": step}, start_step=0, buffer_size=4)
    try:
        deadline = time.monotonic() + 5.0
        while not prefetcher._queue.full() and time.monotonic() < deadline:
            time.sleep(0.01)
        prefetcher.take_wait_seconds()
        prefetcher.next()
        waited = prefetcher.take_wait_seconds()
    finally:
        prefetcher.close()

    assert waited < 0.05


def test_prefetch_close_stops_thread():
    prefetcher = Prefetcher(lambda step: {"step": step}, start_step=0, buffer_size=1)
    prefetcher.next()
    prefetcher.close()

    assert not prefetcher._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.next()


def test_prefetch_buffer_size_invalid():
    with pytest.raises(ValueError, match="buffer_size"):
        Prefetcher(lambda step: {}, start_step=0, buffer_size=0)
