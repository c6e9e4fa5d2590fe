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
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import requests
import tensorflow_datasets as tfds

MANUAL_DIR_FLAG = "--config.data.manual_dir"
INPUT_FILENAME = "input.txt"
SPLITS = ("train", "validation", "test")

# Seconds to wait for a TCP connection to the download host (or its proxy).
# TFDS 4.9.10 retries a failed download 10 times with exponential backoff, which
# took 204 s on a machine whose DNS lookups fail at once, almost all of it
# backoff sleeps. The probe with this timeout runs first to fail fast.
CONNECT_TIMEOUT_SECONDS = 5.0

_UpstreamBuilder = tfds.builder_cls("tiny_shakespeare")


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared and its source text cannot be downloaded."""


class SourceFileError(ValueError):
    """A source file in the manual dir is not in the format that the builder reads."""


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


def _probe_address(url: str) -> tuple[str, int, bool]:
    """Return the host and port that a request for `url` connects to first.

    That is the proxy from the environment (`https_proxy` and the like) when one
    applies to the URL's host, otherwise the host itself. The flag is True for
    a proxy.
    """
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(
            proxy if "://" in proxy else f"http://{proxy}"
        )
        proxy_port = proxy_url.port or (443 if proxy_url.scheme == "https" else 80)
        return proxy_url.hostname or "", proxy_port, True
    return host, parsed.port or (443 if parsed.scheme == "https" else 80), False


def _check_reachable(url: str) -> None:
    """Raise DatasetUnavailableError unless a TCP connection for `url` opens.

    NOTE: the DNS lookup inside `create_connection` takes no timeout, so a
    resolver that hangs delays the error by its own timeout (with the glibc
    defaults, 5 s per try and 2 tries per nameserver).
    """
    host, port, via_proxy = _probe_address(url)
    target = f"proxy {host}:{port}" if via_proxy else f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as error:
        raise DatasetUnavailableError(
            f"The Tiny Shakespeare dataset could not be downloaded from {url}: "
            f"connecting to {target} failed ({error}). {_manual_dir_hint()}"
        ) from error


class _FailFastDownloadManager:
    """Wrap a TFDS download manager so that an offline download fails at once.

    `download` probes the host before handing the URL to TFDS and turns any
    download failure into DatasetUnavailableError.
    """

    def __init__(self, dl_manager: tfds.download.DownloadManager):
        self._dl_manager = dl_manager

    def __getattr__(self, name: str):
        return getattr(self._dl_manager, name)

    def download(self, url: str):
        _check_reachable(url)
        try:
            return self._dl_manager.download(url)
        except (
            OSError,
            requests.RequestException,
            tfds.download.DownloadError,
        ) as error:
            raise DatasetUnavailableError(
                f"The Tiny Shakespeare dataset could not be downloaded from {url} "
                f"({type(error).__name__}: {error}). {_manual_dir_hint()}"
            ) from error


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
            return super()._split_generators(_FailFastDownloadManager(dl_manager))

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
