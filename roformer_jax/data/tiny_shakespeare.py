"""Tiny Shakespeare through the TFDS `tiny_shakespeare` builder, with an offline option.

`TinyShakespeare` subclasses the builder that TFDS ships and keeps its name and
version, so prepared data lands in `<data_dir>/tiny_shakespeare/1.0.0/` as with
`tfds.load("tiny_shakespeare")`. The only change is where `input.txt` comes from:
`<manual_dir>/input.txt` when `DownloadConfig(manual_dir=...)` is set, otherwise
the upstream download. Both paths run the upstream `_split_generators`, so the
90/5/5 character split is the one TFDS computes.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds

# The errors are shared by every loader, so callers catch one type; they are
# imported here too because callers import them from this module.
from roformer_jax.data.offline import (
    MANUAL_DIR_FLAG,
    DatasetUnavailableError,
    FailFastDownloadManager,
    SourceFileError,
)

__all__ = [
    "MANUAL_DIR_FLAG",
    "DatasetUnavailableError",
    "SourceFileError",
    "TinyShakespeare",
    "load_text_splits",
]

INPUT_FILENAME = "input.txt"
SPLITS = ("train", "validation", "test")

_UpstreamBuilder = tfds.builder_cls("tiny_shakespeare")


def _manual_dir_hint() -> str:
    return (
        f"Pass {MANUAL_DIR_FLAG}=DIR where DIR contains {INPUT_FILENAME} "
        "(the Tiny Shakespeare text, e.g. from the char-rnn repository)."
    )


class _LocalFileDownloadManager:
    """Stand-in download manager whose `download` returns a local file."""

    def __init__(self, path: Path):
        self._path = path

    def download(self, url: str) -> str:
        del url  # The local file replaces the URL that the builder requests.
        return os.fspath(self._path)


class TinyShakespeare(_UpstreamBuilder, skip_registration=True):
    """The TFDS `tiny_shakespeare` builder, reading `<manual_dir>/input.txt` if given.

    Registration is skipped because the upstream class is registered under this name.
    Without a manual dir, `download_and_prepare` downloads `input.txt` as
    upstream does, but raises DatasetUnavailableError within seconds when the
    host cannot be reached.
    """

    name = "tiny_shakespeare"

    # `manual_dir` of the last `download_and_prepare` call, None when unset.
    _requested_manual_dir: Path | None = None

    def download_and_prepare(self, *, download_config=None, **kwargs):
        # The download manager always has a manual dir (by default
        # `<download_dir>/manual`), so the explicit choice is read here.
        manual_dir = download_config.manual_dir if download_config else None
        self._requested_manual_dir = (
            Path(manual_dir) if manual_dir is not None else None
        )
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _split_generators(self, dl_manager):
        if self._requested_manual_dir is None:
            return super()._split_generators(
                FailFastDownloadManager(
                    dl_manager,
                    dataset="The Tiny Shakespeare dataset",
                    hint=_manual_dir_hint(),
                )
            )

        path = self._requested_manual_dir / INPUT_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the manual dir must contain {INPUT_FILENAME}, "
                "the Tiny Shakespeare text (e.g. from the char-rnn repository)."
            )
        _check_utf8(path)
        return super()._split_generators(_LocalFileDownloadManager(path))


def _check_utf8(path: Path) -> None:
    """Raise SourceFileError unless `path` is UTF-8, which the upstream builder decodes."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SourceFileError(
            f"{path}, line {line}: invalid UTF-8 ({error.reason} at byte "
            f"{error.start} of the file). {INPUT_FILENAME} must be UTF-8 text. "
            "Convert it, for example with iconv -f <its encoding> -t utf-8."
        ) from error


def load_text_splits(*, data_dir: str | None, manual_dir: str | None) -> dict[str, str]:
    """Prepare Tiny Shakespeare in `data_dir` if needed and return each split's text.

    Args:
      data_dir: TFDS data directory. None means the TFDS default
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      manual_dir: directory containing `input.txt`, used instead of the download
        when the dataset is not yet prepared. An already prepared dataset is
        reused without reading it.

    Returns:
      `{"train": ..., "validation": ..., "test": ...}`.

    Raises:
      DatasetUnavailableError: not prepared, no manual dir, and the download failed.
      FileNotFoundError: not prepared and `manual_dir` has no `input.txt`.
      SourceFileError: not prepared and `input.txt` in `manual_dir` is not UTF-8.
    """
    builder = TinyShakespeare(data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False
    )
    builder.download_and_prepare(download_config=download_config)

    splits = {}
    for split in SPLITS:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        # Upstream writes one example per split, so the join only guards against more.
        texts = [example["text"].decode("utf-8") for example in tfds.as_numpy(dataset)]
        splits[split] = "".join(texts)
    return splits
