"""Metric output: JSON lines, TensorBoard event files, and the progress line."""

import json
import logging
import os
import time

import jax

logger = logging.getLogger(__name__)


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events.

    Each JSON line is one object with `step` and slash-named keys such as
    `train/loss`. Only process 0 writes.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._summary = None
        if not self._enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(
            os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8"
        )
        if tensorboard:
            from flax.metrics import tensorboard as flax_tensorboard

            self._summary = flax_tensorboard.SummaryWriter(
                os.path.join(workdir, "tensorboard")
            )

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        values = {key: float(value) for key, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        if self._summary is not None:
            for key, value in values.items():
                self._summary.scalar(key, value, step)
            self._summary.flush()

    def write_text(self, tag: str, text: str) -> None:
        if self._enabled and self._summary is not None:
            self._summary.text(tag, text, 0)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._summary is not None:
            self._summary.close()


def read_metrics(workdir: str) -> list[dict]:
    """Return the rows of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


class Progress:
    """Steps/s, tokens/s and ETA over the interval since the last report."""

    def __init__(self, start_step: int, total_steps: int, tokens_per_step: int):
        self._total = total_steps
        self._tokens_per_step = tokens_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps_per_second = (step - self._last_step) / elapsed
        self._last_step, self._last_time = step, now
        remaining = self._total - step
        eta = remaining / steps_per_second if steps_per_second > 0 else float("inf")
        return {
            "perf/steps_per_second": steps_per_second,
            "perf/tokens_per_second": steps_per_second * self._tokens_per_step,
            "perf/eta_seconds": eta,
        }

    def restart_clock(self, step: int) -> None:
        """Exclude time spent outside training (evaluation, saving)."""
        self._last_step, self._last_time = step, time.perf_counter()


def format_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{seconds:02d}"
