"""Build batches on a background thread while the accelerator runs."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Batch = dict[str, Any]

# Seconds between checks of the stop flag while a blocking queue call waits.
_POLL_SECONDS = 0.1


class Prefetcher:
    """Batches from `make_batch(step)`, built ahead of use on a background thread.

    A daemon thread calls make_batch for step = start_step, start_step + 1, ...
    and keeps up to `buffer_size` batches in a queue. `next()` returns them in
    step order. An exception raised by `make_batch` is raised
    again by the `next()` call that would have returned that step, and by every
    later call. One thread should consume, because the wait-time counter
    has no lock.
    """

    def __init__(
        self, make_batch: Callable[[int], Batch], start_step: int, buffer_size: int = 2
    ):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}.")
        self._make_batch = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._wait_seconds = 0.0
        self._thread = threading.Thread(
            target=self._produce, args=(start_step,), name="Prefetcher", daemon=True
        )
        self._thread.start()

    def _produce(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self._make_batch(step), None)
            except BaseException as error:  # Forwarded to the consumer by next().
                item = (step, None, error)
            if not self._put(item) or item[2] is not None:
                return
            step += 1

    def _put(self, item: tuple) -> bool:
        """Put `item` in the queue. Return False if close() was called first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _get(self) -> tuple:
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError(
                        "next() called on a closed Prefetcher."
                    ) from None
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(
                        "The prefetch thread stopped without a batch or an error."
                    ) from None

    def next(self) -> tuple[int, Batch]:
        """Return the next `(step, batch)`, blocking until it is ready.

        Raises:
          Exception: the one `make_batch` raised for this step or an earlier one.
          RuntimeError: the prefetcher is closed.
        """
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise RuntimeError("next() called on a closed Prefetcher.")

        start = time.perf_counter()
        try:
            step, batch, error = self._get()
        finally:
            self._wait_seconds += time.perf_counter() - start
        if error is not None:
            self._error = error
            raise error
        return step, batch

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[int, Batch]:
        return self.next()

    @property
    def wait_seconds(self) -> float:
        """Seconds spent blocked in next() since creation or the last take_wait_seconds()."""
        return self._wait_seconds

    def take_wait_seconds(self) -> float:
        """Return the seconds spent blocked in next() and reset the counter to 0."""
        seconds = self._wait_seconds
        self._wait_seconds = 0.0
        return seconds

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread, waiting up to `timeout` seconds for make_batch to return.

        close() may be called more than once.
        """
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "The prefetch thread is still in make_batch %.1f s after close(); "
                "leaving it to finish as a daemon thread.",
                timeout,
            )
        # Drop buffered batches so their memory is freed now.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
