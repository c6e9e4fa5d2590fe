"""Shared machinery of the benchmark suite: statistics, pairing, threads,
machine facts, memory accounting and the worker subprocesses.

This module imports only the standard library, so the parent process of
`benchmarks.run_all` never starts a JAX or torch thread pool of its own.
Every measurement runs in a worker (`benchmarks.worker`) that one
`Worker` here starts and drives over pipes.
"""

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger(__name__)

# Distributions whose versions the page records.
LIBRARIES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "torch",
    "transformers",
    "numpy",
)

# --- statistics -------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict:
    """Return the median, min, max and count of `values`, and the values.

    Raises:
      ValueError: `values` is empty.
    """
    values = [float(value) for value in values]
    if not values:
        raise ValueError("summarize() got no values; time at least one run.")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def pair_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list:
    """Divide the i-th numerator by the i-th denominator, run by run.

    Ratios are formed within one repetition, so that a slow spell of the
    machine affects both sides of a ratio alike.

    Raises:
      ValueError: the sequences differ in length, or a denominator is 0.
    """
    if len(numerators) != len(denominators):
        raise ValueError(
            f"pair_ratios() got {len(numerators)} numerators and "
            f"{len(denominators)} denominators; pair runs of one repetition each."
        )
    ratios = []
    for index, (numerator, denominator) in enumerate(
        zip(numerators, denominators, strict=True)
    ):
        if denominator == 0:
            raise ValueError(f"Denominator {index} of pair_ratios() is 0.")
        ratios.append(numerator / denominator)
    return ratios


def speedups_over_fastest(
    ours_seconds: Sequence[float], others: dict[str, Sequence[float]]
) -> list[float]:
    """Return, per repetition, the fastest other time divided by ours.

    A value of 1.3 means ours took 1 / 1.3 of the time of the faster of the
    others in that repetition, so its throughput was 1.3 times higher.
    """
    if not others:
        raise ValueError("speedups_over_fastest() needs at least one other timing.")
    lengths = {name: len(seconds) for name, seconds in others.items()}
    if any(length != len(ours_seconds) for length in lengths.values()):
        raise ValueError(
            f"Timings differ in length: ours {len(ours_seconds)}, others "
            f"{lengths}; pair runs of one repetition each."
        )
    fastest = [min(times) for times in zip(*others.values(), strict=True)]
    return pair_ratios(fastest, ours_seconds)


def rotated_order(names: Sequence[str], repetition: int) -> list[str]:
    """Rotate `names` by `repetition` places, so each name leads equally often
    and none always runs right after a particular other one warms the caches."""
    if not names:
        return []
    shift = repetition % len(names)
    return list(names[shift:]) + list(names[:shift])


# --- threads and machine ----------------------------------------------------


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def resolve_cpus(threads: int | None) -> list[int]:
    """Return the first `threads` CPUs this process may run on (all if None).

    Raises:
      ValueError: `threads` is below 1 or above the number of usable CPUs.
    """
    cpus = available_cpus()
    if threads is None:
        return cpus
    if not 1 <= threads <= len(cpus):
        raise ValueError(
            f"--threads={threads} is invalid; this process may use {len(cpus)} "
            f"CPUs ({cpus}), so pass a number from 1 to {len(cpus)}."
        )
    return cpus[:threads]


def worker_environment(cpus: Sequence[int]) -> dict[str, str]:
    """Build the environment of a worker limited to `cpus`.

    OpenMP and MKL (torch) read their thread counts from it. XLA sizes its
    CPU thread pool from the process's CPU affinity, which the worker sets.
    Fake host devices are removed from XLA_FLAGS so each worker has one CPU
    device, and USE_TF=0 keeps transformers from importing TensorFlow.
    """
    env = dict(os.environ)
    threads = str(len(cpus))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = threads
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
    ).strip()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    env["USE_TF"] = "0"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    return env


def pin_to_cpus(cpus: Sequence[int]) -> None:
    """Restrict this process, and the thread pools it starts later, to `cpus`."""
    os.sched_setaffinity(0, set(cpus))


def cpu_model() -> str:
    """Return lscpu's model name, or platform's processor string without it."""
    if shutil.which("lscpu"):
        output = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total_bytes() -> int | None:
    return _meminfo_bytes("MemTotal")


def memory_available_bytes() -> int | None:
    return _meminfo_bytes("MemAvailable")


def _meminfo_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info(cpus: Sequence[int]) -> dict:
    """Describe the machine and the thread setting that every worker used."""
    return {
        "cpu_model": cpu_model(),
        "cpus_usable": len(available_cpus()),
        "cpus_used": list(cpus),
        "threads": len(cpus),
        "memory_total_bytes": memory_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


# --- memory -----------------------------------------------------------------


def max_rss_bytes() -> int:
    """Return this process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def xla_peak_bytes(memory_stats) -> int:
    """Return the bytes that a compiled XLA program keeps live at its peak.

    `memory_stats` is `compiled.memory_analysis()`: arguments, outputs and
    temporaries, less the outputs that reuse a donated argument's buffer.
    """
    return int(
        memory_stats.argument_size_in_bytes
        + memory_stats.output_size_in_bytes
        + memory_stats.temp_size_in_bytes
        - memory_stats.alias_size_in_bytes
    )


# --- workers ----------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker raised; the message carries its traceback."""


@dataclasses.dataclass
class Worker:
    """One `benchmarks.worker` subprocess pinned to `cpus`, driven by JSON
    lines: `start` builds a session, `run` times it once, `stop` ends it.

    Requests go to the worker's stdin and replies come back on a pipe of
    their own, so whatever the libraries print to stdout cannot corrupt a
    reply. The worker's stderr goes to this process's stderr.
    """

    cpus: Sequence[int]
    label: str = "worker"

    def __post_init__(self):
        reply_read, reply_write = os.pipe()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.worker",
                f"--cpus={','.join(str(cpu) for cpu in self.cpus)}",
                f"--reply-fd={reply_write}",
            ],
            stdin=subprocess.PIPE,
            stdout=sys.stderr.fileno(),
            env=worker_environment(self.cpus),
            cwd=REPO_ROOT,
            pass_fds=(reply_write,),
            text=True,
        )
        os.close(reply_write)
        self._replies = os.fdopen(reply_read, "r", encoding="utf-8")

    def call(self, op: str, **arguments) -> dict:
        """Send one request and return the worker's reply.

        Raises:
          WorkerError: the worker raised (its traceback is in the message) or
            exited before replying.
        """
        request = json.dumps({"op": op, **arguments})
        try:
            self._process.stdin.write(request + "\n")
            self._process.stdin.flush()
        except BrokenPipeError as error:
            raise WorkerError(
                f"Worker {self.label} exited (code {self._process.poll()}) before "
                f"request {op!r}; see its output above."
            ) from error
        line = self._replies.readline()
        if not line:
            code = self._process.wait()
            raise WorkerError(
                f"Worker {self.label} exited with code {code} during request "
                f"{op!r}; see its output above (code -9 usually means it ran "
                "out of memory)."
            )
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(
                f"Worker {self.label} failed on request {op!r}:\n{reply['error']}"
            )
        return reply

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("exit")
            except WorkerError:
                pass
            self._process.stdin.close()
            self._process.wait()
        self._replies.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to measure, and on which CPUs every worker runs."""

    quick: bool
    cpus: tuple[int, ...]
    warmup: int  # Untimed runs of each session before the timed ones.
    repeats: int  # Timed runs of each session.


def start_session(worker: Worker, module: str, cls: str, **params) -> dict:
    """Build a session in `worker`; return its reply (`session` and `info`,
    or `skipped` with the reason)."""
    return worker.call("start", module=module, cls=cls, params=params)


def measure_alternating(
    entries: dict[str, tuple[Worker, int]], *, warmup: int, repeats: int
) -> dict[str, list[dict]]:
    """Run every session once per repetition, in rotated order.

    `entries` maps a name to (worker, session id). The first `warmup`
    repetitions are untimed. Returns, per name, the replies of the timed
    repetitions in order, so that entry i of two names comes from the same
    repetition.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"repeats={repeats} and warmup={warmup} are invalid; time at least "
            "one run and use a warm-up count of 0 or more."
        )
    replies: dict[str, list[dict]] = {name: [] for name in entries}
    for repetition in range(warmup + repeats):
        timed = repetition >= warmup
        for name in rotated_order(list(entries), repetition):
            worker, session = entries[name]
            reply = worker.call("run", session=session)
            if timed:
                replies[name].append(reply)
        logger.info(
            "  repetition %d/%d%s: %s",
            repetition + 1,
            warmup + repeats,
            "" if timed else " (warm-up)",
            ", ".join(
                f"{name} {replies[name][-1]['seconds'] * 1e3:,.1f} ms"
                for name in entries
                if timed
            )
            or "done",
        )
    return replies


def seconds_of(replies: list[dict]) -> list[float]:
    return [float(reply["seconds"]) for reply in replies]


def worker_memory(worker: Worker) -> dict:
    """Return the worker's peak RSS, its RSS after imports, and the growth."""
    reply = worker.call("memory")
    baseline = reply["baseline_rss_bytes"] or 0
    return {
        "max_rss_bytes": reply["max_rss_bytes"],
        "baseline_rss_bytes": baseline,
        "rss_growth_bytes": reply["max_rss_bytes"] - baseline,
    }
