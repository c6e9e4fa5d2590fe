"""Errors and fail-fast downloads shared by the dataset loaders.

Each loader reads a local copy when `data.manual_dir` is set, and otherwise
lets its TFDS builder download the source. TFDS 4.9.10 retries a failed
download 10 times with exponential backoff (`MAX_RETRIES` in
tensorflow_datasets/core/download/downloader.py), which took 204 s on a
machine whose DNS lookups fail at once. `FailFastDownloadManager` probes the
host first, so an offline machine gets `DatasetUnavailableError`, with the
loader's hint on `data.manual_dir`, within seconds.
"""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from collections.abc import Mapping

import requests
import tensorflow_datasets as tfds

MANUAL_DIR_FLAG = "--config.data.manual_dir"

# Seconds to wait for a TCP connection to the download host (or its proxy).
CONNECT_TIMEOUT_SECONDS = 5.0


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared and its source cannot be downloaded."""


class SourceFileError(ValueError):
    """A source file in the manual dir is not in the format that the builder reads."""


def probe_address(url: str) -> tuple[str, int, bool]:
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


def check_reachable(url: str, *, dataset: str, hint: str) -> None:
    """Raise DatasetUnavailableError unless a TCP connection for `url` opens.

    `dataset` names the data in the message ("The enwik8 dataset"), and `hint`
    explains how to use a local copy instead.

    NOTE: the DNS lookup inside `create_connection` takes no timeout, so a
    resolver that hangs delays the error by its own timeout (with the glibc
    defaults, 5 s per try and 2 tries per nameserver).
    """
    host, port, via_proxy = probe_address(url)
    target = f"proxy {host}:{port}" if via_proxy else f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as error:
        raise DatasetUnavailableError(
            f"{dataset} could not be downloaded from {url}: connecting to "
            f"{target} failed ({error}). {hint}"
        ) from error


class FailFastDownloadManager:
    """Wrap a TFDS download manager so that an offline download fails at once.

    `download` and `download_and_extract` take a URL or a mapping of URLs, as
    TFDS's do. They probe each host first, and turn any download failure into
    DatasetUnavailableError naming `dataset` and ending with `hint`. Other
    attributes come from the wrapped manager.
    """

    def __init__(
        self, dl_manager: tfds.download.DownloadManager, *, dataset: str, hint: str
    ):
        self._dl_manager = dl_manager
        self._dataset = dataset
        self._hint = hint

    def __getattr__(self, name: str):
        return getattr(self._dl_manager, name)

    def _fetch(self, method, urls):
        url_list = list(urls.values()) if isinstance(urls, Mapping) else [urls]
        for url in url_list:
            check_reachable(url, dataset=self._dataset, hint=self._hint)
        try:
            return method(urls)
        except (
            OSError,
            requests.RequestException,
            tfds.download.DownloadError,
        ) as error:
            source = url_list[0] if len(url_list) == 1 else url_list
            raise DatasetUnavailableError(
                f"{self._dataset} could not be downloaded from {source} "
                f"({type(error).__name__}: {error}). {self._hint}"
            ) from error

    def download(self, urls):
        return self._fetch(self._dl_manager.download, urls)

    def download_and_extract(self, urls):
        return self._fetch(self._dl_manager.download_and_extract, urls)
