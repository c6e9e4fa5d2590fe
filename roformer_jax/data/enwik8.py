"""Enwik8, the byte-level language modelling benchmark, as the TFDS builder `enwik8`.

Enwik8 is the first 10^8 bytes of the English Wikipedia XML dump of 2006-03-03,
published as http://mattmahoney.net/dc/enwik8.zip (one member, `enwik8`). It is
split by position into 90M/5M/5M bytes for train/validation/test, its vocabulary
is the 256 byte values, and models are scored in bits per byte.

The builder has two configs, each prepared in its own directory:

- `official` (default), in `<data_dir>/enwik8/official/1.0.0/`: the bytes of
  `<manual_dir>/enwik8` or `<manual_dir>/enwik8.zip` when a manual dir is given,
  otherwise the archive downloaded by the TFDS download manager.
- `excerpt`, in `<data_dir>/enwik8/excerpt/1.0.0/`: the raw bytes of another
  MediaWiki XML dump, `<manual_dir>/<source_file>` (plain or `.bz2`), split with
  the same 90/5/5 proportions. It replaces enwik8 where the official file is not
  available, and its own directory keeps it from being loaded as enwik8.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from roformer_jax.data.offline import (
    MANUAL_DIR_FLAG,
    FailFastDownloadManager,
    SourceFileError,
)
from roformer_jax.data.tiny_shakespeare import SPLITS

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_FILENAME = "enwik8"
ENWIK8_ZIP_FILENAME = "enwik8.zip"
# Size of the official file, and the number of leading bytes the official config uses.
ENWIK8_BYTES = 10**8
BYTE_VOCAB_SIZE = 256

OFFICIAL_CONFIG = "official"
EXCERPT_CONFIG = "excerpt"

# Split proportions in percent of the byte count, in SPLITS order.
TRAIN_PERCENT = 90
VALIDATION_PERCENT = 5

logger = logging.getLogger(__name__)

# Errors of zipfile for a damaged archive besides BadZipFile. EOFError is a
# compressed member cut short, and zlib.error, lzma.LZMAError or OSError (from
# bz2) a corrupt one. NotImplementedError is an unknown compression method and
# RuntimeError an encrypted member. OSError is also a seek to a negative
# offset, and UnicodeDecodeError (a ValueError) a member name flagged as UTF-8
# that is not.
_DAMAGED_ZIP_ERRORS = (
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


def split_bytes(data: bytes, total: int | None) -> tuple[bytes, bytes, bytes]:
    """Split the first `total` bytes of `data` by position into train/validation/test.

    With n = `total` (the length of `data` when None), train is the first
    floor(0.90 n) bytes and validation the next floor(0.05 n) bytes. Test is the
    rest, so it has 0 to 2 bytes more than floor(0.05 n) because of the rounding. For
    n = 10^8 the lengths are exactly 90,000,000, 5,000,000 and 5,000,000.

    Raises:
      ValueError: `total` is negative or larger than the length of `data`.
    """
    if total is None:
        total = len(data)
    elif total < 0:
        raise ValueError(f"total must be non-negative or None, got {total}.")
    elif total > len(data):
        raise ValueError(
            f"total={total} exceeds the {len(data)} bytes of data. Pass a total of "
            f"at most {len(data)}, or None to split all of data."
        )

    train_end = total * TRAIN_PERCENT // 100
    validation_end = train_end + total * VALIDATION_PERCENT // 100
    return data[:train_end], data[train_end:validation_end], data[validation_end:total]


def _manual_dir_hint() -> str:
    return (
        f"Pass {MANUAL_DIR_FLAG}=DIR where DIR contains {ENWIK8_ZIP_FILENAME} "
        f"(from {ENWIK8_URL}) or the file {ENWIK8_FILENAME} extracted from it."
    )


def _read_zip_member(archive: Path) -> bytes:
    """Return the bytes of member `enwik8` of the zip archive `archive`."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            return zip_file.read(ENWIK8_FILENAME)
    except zipfile.BadZipFile as error:
        raise SourceFileError(
            f"{archive} is not a valid zip archive ({error}). Download it again "
            f"from {ENWIK8_URL}."
        ) from error
    except KeyError as error:
        raise SourceFileError(
            f"{archive} has no member named {ENWIK8_FILENAME!r}. The archive from "
            f"{ENWIK8_URL} contains exactly this member."
        ) from error
    except _DAMAGED_ZIP_ERRORS as error:
        raise SourceFileError(
            f"{archive} is a damaged zip archive ({type(error).__name__}: {error}). "
            f"Download it again from {ENWIK8_URL}."
        ) from error


def _read_official_manual(manual_dir: Path) -> tuple[bytes, str]:
    """Return the enwik8 bytes in `manual_dir` and the name of the file read.

    The extracted file is preferred because it needs no decompression.
    """
    extracted = manual_dir / ENWIK8_FILENAME
    archive = manual_dir / ENWIK8_ZIP_FILENAME
    if extracted.is_file():
        return extracted.read_bytes(), ENWIK8_FILENAME
    if archive.is_file():
        return _read_zip_member(archive), ENWIK8_ZIP_FILENAME
    raise FileNotFoundError(
        f"Neither {archive} nor {extracted} found: the manual dir must contain "
        f"{ENWIK8_ZIP_FILENAME} (from {ENWIK8_URL}) or the file {ENWIK8_FILENAME} "
        "extracted from it."
    )


def _download_official(dl_manager: tfds.download.DownloadManager) -> bytes:
    """Download and extract the official archive, failing within seconds offline."""
    archive = FailFastDownloadManager(
        dl_manager, dataset="The enwik8 dataset", hint=_manual_dir_hint()
    ).download(ENWIK8_URL)
    extracted_dir = Path(dl_manager.extract(archive))
    return (extracted_dir / ENWIK8_FILENAME).read_bytes()


def _read_excerpt(path: Path) -> bytes:
    """Return the raw bytes of a MediaWiki XML dump, decompressed if named `*.bz2`."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: with source_file={path.name!r} the manual dir must "
            "contain that MediaWiki XML dump (plain XML or .bz2)."
        )
    if path.suffix != ".bz2":
        return path.read_bytes()
    try:
        with bz2.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError) as error:
        # bz2 raises OSError for data that is not bz2 and EOFError for a
        # truncated stream.
        raise SourceFileError(
            f"{path} could not be decompressed as bz2 ({error}). Pass an "
            "uncorrupted .bz2 dump, or decompress it and pass the .xml file."
        ) from error


class Enwik8(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of enwik8 with one example per split, holding that split's bytes.

    The feature `text` is a scalar `tf.string`, which stores all 256 byte values
    unchanged (a `Text` feature would require UTF-8). Pass `source_file` to build
    the `excerpt` config from `<manual_dir>/<source_file>` instead of enwik8.
    """

    name = "enwik8"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=OFFICIAL_CONFIG,
            description="The first 10^8 bytes of the 2006-03-03 Wikipedia dump.",
        ),
        tfds.core.BuilderConfig(
            name=EXCERPT_CONFIG,
            description=(
                "Raw bytes of another MediaWiki XML dump from the manual dir, "
                "split 90/5/5 like enwik8."
            ),
        ),
    ]

    # `manual_dir` of the last `download_and_prepare` call, None when unset.
    _requested_manual_dir: Path | None = None

    def __init__(self, *, source_file: str | None = None, config=None, **kwargs):
        """Create the builder, using the `excerpt` config when `source_file` is set.

        Args:
          source_file: name of a MediaWiki XML dump (plain or `.bz2`) in the manual
            dir to read instead of enwik8. None selects the `official` config.
          config: config name or object. It defaults to the config that
            `source_file` selects and must agree with it.
          **kwargs: further `tfds.core.GeneratorBasedBuilder` arguments.
        """
        config_name = getattr(config, "name", config)
        if source_file is not None:
            if config_name not in (None, EXCERPT_CONFIG):
                raise ValueError(
                    f"source_file={source_file!r} requires the {EXCERPT_CONFIG!r} "
                    f"config, got config={config_name!r}. Omit config or pass "
                    f"config={EXCERPT_CONFIG!r}."
                )
            config = config if config is not None else EXCERPT_CONFIG
        self._source_file = source_file
        super().__init__(config=config, **kwargs)
        # TFDS rebuilds a builder from `_original_state` when it is unpickled.
        self._original_state["source_file"] = source_file

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Tensor(shape=(), dtype=tf.string)}
            ),
            supervised_keys=None,
            homepage="http://mattmahoney.net/dc/textdata.html",
            # The file name and byte count of the source, checked on reuse.
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, *, download_config=None, **kwargs):
        # The download manager always has a manual dir (by default
        # `<download_dir>/manual`), so the explicit choice is read here.
        manual_dir = download_config.manual_dir if download_config else None
        self._requested_manual_dir = (
            Path(manual_dir) if manual_dir is not None else None
        )
        if self.data_path.exists():
            self._check_prepared_source()
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _check_prepared_source(self) -> None:
        """Raise ValueError if the prepared excerpt came from another source file.

        NOTE: only the file name is compared, so a dump changed under the same name
        is not detected and the prepared data is reused.
        """
        if self.builder_config.name != EXCERPT_CONFIG or self._source_file is None:
            return
        prepared_from = self.info.metadata.get("source_file")
        requested = Path(self._source_file).name
        if prepared_from != requested:
            raise ValueError(
                f"{self.data_path} was prepared from source_file={prepared_from!r}, "
                f"not the requested {requested!r}. Use another data dir, or delete "
                "that directory to prepare it again."
            )

    def _read_source(self, dl_manager) -> tuple[bytes, int | None, str]:
        """Return the bytes to split, the number of them to use and their file name."""
        manual_dir = self._requested_manual_dir

        if self.builder_config.name == EXCERPT_CONFIG:
            if self._source_file is None:
                raise ValueError(
                    f"The {EXCERPT_CONFIG!r} config reads a MediaWiki XML dump from "
                    "the manual dir, but no source_file was given. Pass "
                    "source_file=NAME, the dump's file name."
                )
            if manual_dir is None:
                raise ValueError(
                    f"source_file={self._source_file!r} is read from the manual "
                    f"dir, but none was given. Pass {MANUAL_DIR_FLAG}=DIR where DIR "
                    "contains that file."
                )
            path = manual_dir / self._source_file
            return _read_excerpt(path), None, path.name

        if manual_dir is None:
            data, source_name = _download_official(dl_manager), ENWIK8_ZIP_FILENAME
            source = ENWIK8_URL
        else:
            data, source_name = _read_official_manual(manual_dir)
            source = str(manual_dir / source_name)
        if len(data) < ENWIK8_BYTES:
            raise SourceFileError(
                f"{source} contains {len(data)} bytes, but enwik8 has "
                f"{ENWIK8_BYTES}: the file is truncated or is not enwik8. Download "
                f"it again from {ENWIK8_URL}."
            )
        if len(data) > ENWIK8_BYTES:
            logger.warning(
                "%s contains %d bytes, so only the first %d are used, as in enwik8.",
                source_name,
                len(data),
                ENWIK8_BYTES,
            )
        return data, ENWIK8_BYTES, source_name

    def _split_generators(self, dl_manager):
        data, total, source_name = self._read_source(dl_manager)
        split_data = split_bytes(data, total)
        self.info.metadata["source_file"] = source_name
        self.info.metadata["source_bytes"] = sum(len(part) for part in split_data)
        return {
            split: self._generate_examples(split, part)
            for split, part in zip(SPLITS, split_data, strict=True)
        }

    def _generate_examples(self, split: str, data: bytes):
        yield split, {"text": data}


def load_byte_splits(
    *, data_dir: str | None, manual_dir: str | None, source_file: str | None = None
) -> dict[str, np.ndarray]:
    """Prepare enwik8 (or an excerpt) in `data_dir` if needed and return each split.

    Args:
      data_dir: TFDS data directory. None means the TFDS default
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      manual_dir: directory containing `enwik8.zip` or `enwik8` (or `source_file`),
        read instead of the download when the dataset is not yet prepared. An
        already prepared dataset is reused without reading it.
      source_file: name of a MediaWiki XML dump (plain or `.bz2`) in `manual_dir`
        whose raw bytes replace enwik8, prepared as the `excerpt` config.

    Returns:
      `{"train": ..., "validation": ..., "test": ...}`, writable 1-D uint8 arrays
      of byte values.

    Raises:
      DatasetUnavailableError: not prepared, no manual dir, and the download failed.
      FileNotFoundError: not prepared and `manual_dir` lacks the expected file.
      SourceFileError: the source file is a damaged archive, is not valid bz2,
        or is shorter than enwik8. The message names the file.
      ValueError: the prepared excerpt came from another `source_file`, or the
        arguments conflict.
    """
    builder = Enwik8(data_dir=data_dir, source_file=source_file)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False
    )
    builder.download_and_prepare(download_config=download_config)

    splits = {}
    for split in SPLITS:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        # The builder writes one example per split, so the join only guards
        # against more.
        data = b"".join(example["text"] for example in tfds.as_numpy(dataset))
        splits[split] = np.frombuffer(data, dtype=np.uint8).copy()
    return splits
