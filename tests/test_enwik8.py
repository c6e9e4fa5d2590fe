"""Tests for roformer_jax.data.enwik8: the byte split and the TFDS builder."""

import bz2
import math
import socket
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from roformer_jax.data import enwik8
from roformer_jax.data.enwik8 import BYTE_VOCAB_SIZE, load_byte_splits, split_bytes
from roformer_jax.data.offline import DatasetUnavailableError

EXCERPT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EXCERPT_DIR = EXCERPT_DIR / "enwiki_excerpt"
# Bytes of the fake official file, and the number of them the patched official
# config uses (the real one uses 10^8).
FAKE_FILE_BYTES = 300_000
FAKE_TOTAL = 200_003


def _expected_lengths(total: int) -> tuple[int, int, int]:
    """Return floor(0.9 n), floor(0.05 n) and the remainder, in exact arithmetic."""
    train = math.floor(Fraction(9, 10) * total)
    validation = math.floor(Fraction(1, 20) * total)
    return train, validation, total - train - validation


def _fake_enwik8_bytes(size: int) -> bytes:
    """Return every byte value (0x00 first, 0xFF last) followed by random bytes."""
    rng = np.random.default_rng(8)
    tail = rng.integers(0, 256, size=size - 256, dtype=np.uint8)
    return bytes(range(256)) + tail.tobytes()


def _write_zip(path: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)


def _closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_proxy(monkeypatch, port: int) -> None:
    """Route HTTP(S) through 127.0.0.1:port so that no test reaches another host."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


@pytest.fixture
def offline(monkeypatch):
    """Make any download fail at once, because the proxy is a closed loopback port."""
    _use_proxy(monkeypatch, _closed_loopback_port())


@pytest.fixture
def small_official(monkeypatch):
    """Make the official config use the first FAKE_TOTAL bytes instead of 10^8."""
    monkeypatch.setattr(enwik8, "ENWIK8_BYTES", FAKE_TOTAL)


@pytest.fixture(scope="module")
def fake_data() -> bytes:
    return _fake_enwik8_bytes(FAKE_FILE_BYTES)


@pytest.fixture(scope="module")
def excerpt_path() -> Path:
    paths = sorted(EXCERPT_DIR.glob("*.bz2"))
    assert len(paths) == 1, f"expected one .bz2 file in {EXCERPT_DIR}, got {paths}"
    return paths[0]


@pytest.fixture(scope="module")
def excerpt_bytes(excerpt_path) -> bytes:
    return bz2.decompress(excerpt_path.read_bytes())


# --- split_bytes -------------------------------------------------------------


@pytest.mark.parametrize("total", [0, 1, 19, 20, 99, 100, 1001, 123_457])
def test_split_lengths_round_down(total):
    data = bytes(range(256)) * (total // 256 + 1)

    parts = split_bytes(data[:total], None)

    assert tuple(len(part) for part in parts) == _expected_lengths(total)


@pytest.mark.parametrize("total", [0, 7, 1001, 123_457])
def test_split_concatenation_is_input(total):
    data = _fake_enwik8_bytes(max(total, 256))[:total]

    train, validation, test = split_bytes(data, None)

    assert train + validation + test == data


def test_split_cuts_at_total():
    data = _fake_enwik8_bytes(5_000)

    train, validation, test = split_bytes(data, 1_001)

    assert train + validation + test == data[:1_001]
    assert (len(train), len(validation), len(test)) == _expected_lengths(1_001)


def test_split_total_equal_to_length():
    data = _fake_enwik8_bytes(1_000)

    assert split_bytes(data, 1_000) == split_bytes(data, None)


def test_split_official_size():
    data = bytes(enwik8.ENWIK8_BYTES + 17)

    train, validation, test = split_bytes(data, enwik8.ENWIK8_BYTES)

    assert enwik8.ENWIK8_BYTES == 100_000_000
    assert len(train) == 90_000_000
    assert len(validation) == 5_000_000
    assert len(test) == 5_000_000


def test_split_test_remainder_bounds():
    extras = set()
    for total in range(400):
        _, _, test = split_bytes(bytes(total), None)
        extras.add(len(test) - math.floor(Fraction(1, 20) * total))

    assert extras == {0, 1, 2}


def test_split_total_too_large():
    with pytest.raises(ValueError, match=r"total=11 exceeds the 10 bytes"):
        split_bytes(bytes(10), 11)


def test_split_total_negative():
    with pytest.raises(ValueError, match=r"got -1"):
        split_bytes(bytes(10), -1)


# --- Official config from a manual dir ---------------------------------------


def _assert_expected_slices(splits: dict, data: bytes, total: int) -> None:
    train_end = total * 9 // 10
    validation_end = train_end + total // 20
    expected = {
        "train": data[:train_end],
        "validation": data[train_end:validation_end],
        "test": data[validation_end:total],
    }
    assert set(splits) == set(expected)
    for name, array in splits.items():
        assert array.dtype == np.uint8, name
        assert array.ndim == 1, name
        assert array.tobytes() == expected[name], name


@pytest.fixture(scope="module")
def prepared_official(tmp_path_factory, fake_data):
    """Prepare the official config once from a fake enwik8.zip."""
    manual_dir = tmp_path_factory.mktemp("manual")
    _write_zip(manual_dir / "enwik8.zip", "enwik8", fake_data)
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(enwik8, "ENWIK8_BYTES", FAKE_TOTAL)
        splits = load_byte_splits(data_dir=str(data_dir), manual_dir=str(manual_dir))
    return data_dir, splits


def test_official_zip_slices(prepared_official, fake_data):
    _, splits = prepared_official

    _assert_expected_slices(splits, fake_data, FAKE_TOTAL)


def test_official_round_trips_all_bytes(prepared_official):
    _, splits = prepared_official
    head = splits["train"][:BYTE_VOCAB_SIZE]

    assert BYTE_VOCAB_SIZE == 256
    assert head.tolist() == list(range(256))
    assert head[0] == 0x00
    assert head[-1] == 0xFF


def test_official_arrays_writable(prepared_official):
    _, splits = prepared_official

    for name, array in splits.items():
        assert array.flags.writeable, name


def test_official_prepared_layout(prepared_official):
    data_dir, _ = prepared_official
    version_dir = data_dir / "enwik8" / "official" / "1.0.0"

    assert (version_dir / "dataset_info.json").is_file()
    assert list(version_dir.glob("enwik8-train.tfrecord-*"))
    assert not (data_dir / "enwik8" / "excerpt").exists()


def test_official_one_example_per_split(prepared_official):
    data_dir, _ = prepared_official
    builder = enwik8.Enwik8(data_dir=str(data_dir))

    for name in ("train", "validation", "test"):
        assert builder.info.splits[name].num_examples == 1, name


def test_official_reused_offline(prepared_official, offline):
    data_dir, splits = prepared_official

    reloaded = load_byte_splits(data_dir=str(data_dir), manual_dir=None)

    for name in splits:
        assert np.array_equal(reloaded[name], splits[name]), name


def test_official_extracted_file(tmp_path, fake_data, small_official):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "enwik8").write_bytes(fake_data)

    splits = load_byte_splits(
        data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir)
    )

    _assert_expected_slices(splits, fake_data, FAKE_TOTAL)


def test_official_short_file_rejected(tmp_path, fake_data):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "enwik8").write_bytes(fake_data)

    with pytest.raises(ValueError) as raised:
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    message = str(raised.value)
    assert f"contains {FAKE_FILE_BYTES} bytes" in message
    assert "truncated" in message
    assert not (tmp_path / "tfds" / "enwik8" / "official" / "1.0.0").exists()


def test_missing_manual_file_names_both(tmp_path, offline):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()

    with pytest.raises(FileNotFoundError) as raised:
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    message = str(raised.value)
    assert str(manual_dir / "enwik8.zip") in message
    assert str(manual_dir / "enwik8") in message
    assert not (tmp_path / "tfds" / "enwik8" / "official" / "1.0.0").exists()


def test_zip_without_member(tmp_path, small_official):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    _write_zip(manual_dir / "enwik8.zip", "enwik9", bytes(FAKE_TOTAL))

    with pytest.raises(ValueError, match=r"no member named 'enwik8'"):
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))


def test_invalid_zip_rejected(tmp_path, small_official):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "enwik8.zip").write_bytes(b"not a zip archive")

    with pytest.raises(ValueError, match=r"is not a valid zip archive"):
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))


# --- Official config without a manual dir ------------------------------------


def test_offline_fails_fast(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as raised:
        load_byte_splits(data_dir=str(tmp_path), manual_dir=None)
    elapsed = time.perf_counter() - start

    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    assert "enwik8 dataset could not be downloaded" in message
    assert "--config.data.manual_dir=DIR" in message
    assert "enwik8.zip" in message
    assert "Tiny Shakespeare" not in message
    assert elapsed < 10.0
    assert not (tmp_path / "enwik8" / "official" / "1.0.0").exists()


def test_download_error_converted(tmp_path, monkeypatch):
    def fail_download(self, url):
        raise requests.exceptions.ConnectionError(f"cannot reach {url}")

    # A listening loopback proxy lets the reachability probe pass, so the
    # error comes from the patched TFDS download.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _use_proxy(monkeypatch, listener.getsockname()[1])
        monkeypatch.setattr(tfds.download.DownloadManager, "download", fail_download)

        with pytest.raises(DatasetUnavailableError) as raised:
            load_byte_splits(data_dir=str(tmp_path), manual_dir=None)

    message = str(raised.value)
    assert "ConnectionError" in message
    assert "--config.data.manual_dir=DIR" in message
    assert "Tiny Shakespeare" not in message
    assert isinstance(raised.value.__cause__, requests.exceptions.ConnectionError)


def test_download_extracts_archive(tmp_path, monkeypatch, fake_data, small_official):
    archive = tmp_path / "served" / "enwik8.zip"
    archive.parent.mkdir()
    _write_zip(archive, "enwik8", fake_data)
    requested_urls = []

    def serve_archive(self, url):
        requested_urls.append(url)
        return archive

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _use_proxy(monkeypatch, listener.getsockname()[1])
        monkeypatch.setattr(tfds.download.DownloadManager, "download", serve_archive)

        splits = load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=None)

    assert requested_urls == ["http://mattmahoney.net/dc/enwik8.zip"]
    _assert_expected_slices(splits, fake_data, FAKE_TOTAL)


# --- Excerpt config ----------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_excerpt(tmp_path_factory, excerpt_path):
    data_dir = tmp_path_factory.mktemp("tfds_excerpt")
    splits = load_byte_splits(
        data_dir=str(data_dir),
        manual_dir=str(excerpt_path.parent),
        source_file=excerpt_path.name,
    )
    return data_dir, splits


def test_excerpt_split_sizes(prepared_excerpt, excerpt_bytes):
    _, splits = prepared_excerpt
    lengths = tuple(len(splits[name]) for name in ("train", "validation", "test"))

    assert len(excerpt_bytes) == 6_089_746
    assert lengths == _expected_lengths(len(excerpt_bytes))


def test_excerpt_raw_bytes(prepared_excerpt, excerpt_bytes):
    _, splits = prepared_excerpt
    joined = b"".join(
        splits[name].tobytes() for name in ("train", "validation", "test")
    )

    assert splits["train"][:64].tobytes() == excerpt_bytes[:64]
    assert joined == excerpt_bytes


def test_excerpt_own_directory(prepared_excerpt):
    data_dir, _ = prepared_excerpt

    assert (data_dir / "enwik8" / "excerpt" / "1.0.0" / "dataset_info.json").is_file()
    assert not (data_dir / "enwik8" / "official").exists()


def test_excerpt_reused_offline(prepared_excerpt, excerpt_path, offline):
    data_dir, splits = prepared_excerpt

    reloaded = load_byte_splits(
        data_dir=str(data_dir), manual_dir=None, source_file=excerpt_path.name
    )

    for name in splits:
        assert np.array_equal(reloaded[name], splits[name]), name


def test_excerpt_not_loaded_as_official(prepared_excerpt, offline):
    data_dir, _ = prepared_excerpt

    with pytest.raises(DatasetUnavailableError):
        load_byte_splits(data_dir=str(data_dir), manual_dir=None)


def test_excerpt_other_source_rejected(tmp_path, prepared_excerpt):
    data_dir, _ = prepared_excerpt
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "other.xml").write_bytes(b"<mediawiki></mediawiki>\n" * 10)

    with pytest.raises(ValueError) as raised:
        load_byte_splits(
            data_dir=str(data_dir), manual_dir=str(manual_dir), source_file="other.xml"
        )

    assert "other.xml" in str(raised.value)
    assert "another data dir" in str(raised.value)


def test_excerpt_plain_xml(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    data = b"<mediawiki>\n" + bytes(range(256)) * 9 + b"\n</mediawiki>\n"
    (manual_dir / "dump.xml").write_bytes(data)

    splits = load_byte_splits(
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual_dir),
        source_file="dump.xml",
    )

    _assert_expected_slices(splits, data, len(data))


def test_excerpt_missing_file_names_path(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()

    with pytest.raises(FileNotFoundError) as raised:
        load_byte_splits(
            data_dir=str(tmp_path / "tfds"),
            manual_dir=str(manual_dir),
            source_file="dump.xml.bz2",
        )

    assert str(manual_dir / "dump.xml.bz2") in str(raised.value)
    assert not (tmp_path / "tfds" / "enwik8" / "excerpt" / "1.0.0").exists()


def test_excerpt_without_manual_dir(tmp_path, offline):
    with pytest.raises(ValueError) as raised:
        load_byte_splits(
            data_dir=str(tmp_path), manual_dir=None, source_file="dump.xml.bz2"
        )

    assert "--config.data.manual_dir=DIR" in str(raised.value)
    assert "dump.xml.bz2" in str(raised.value)


def test_source_file_conflicting_config(tmp_path):
    with pytest.raises(ValueError, match=r"requires the 'excerpt' config"):
        enwik8.Enwik8(data_dir=str(tmp_path), config="official", source_file="x.bz2")
