"""Run the whole benchmark suite and write its page and raw results.

  python -m benchmarks.run_all [--quick] [--output=docs/benchmarks.md]

Runs, in order: machine peaks, training steps, inference, profiles of the
training scenarios that miss a target, the rotary application, long context
and first-step compile time (see each module's docstring). Every
measurement runs in worker subprocesses pinned to the same CPUs (--threads),
and only one worker computes at a time.

Writes the page to --output and the raw timings beside it, in
`<output without .md>/results.json` (`docs/benchmarks/results.json` by
default), after every benchmark, so a run that fails late keeps what it
measured. A GPU result recorded by `benchmarks/gpu.sh --record` is read
from `docs/benchmarks/gpu.json`.

--quick runs tiny models with one warm-up and two timed runs, to check that
the suite works. It writes under /tmp unless --output is given, so that it
cannot replace the measured page by accident.
"""

import datetime
import json
import logging
import sys
import time
from pathlib import Path

from absl import app, flags

from benchmarks import (
    compile_time,
    harness,
    long_context,
    peaks,
    report,
    rotary,
    shapes,
    training,
)

logger = logging.getLogger(__name__)

BENCHMARKS = ("peaks", "training", "inference", "rotary", "long_context", "compile")
DEFAULT_OUTPUT = harness.REPO_ROOT / "docs" / "benchmarks.md"
QUICK_OUTPUT = Path("/tmp/roformer_jax_benchmarks_quick/benchmarks.md")
GPU_RECORD = harness.REPO_ROOT / "docs" / "benchmarks" / "gpu.json"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags; only the command itself calls this, so
    that importing the module defines none."""
    flags.DEFINE_bool("quick", False, "Tiny models, 1 warm-up and 2 timed runs.")
    flags.DEFINE_string(
        "output",
        None,
        "Path of the Markdown page; the raw results go to <path without .md>/"
        "results.json. Default: docs/benchmarks.md, or under /tmp with --quick.",
    )
    flags.DEFINE_integer(
        "threads", None, "CPUs (and threads) per worker. Default: every usable CPU."
    )
    flags.DEFINE_integer("repeats", None, "Timed runs per figure. Default 5, quick 2.")
    flags.DEFINE_integer(
        "warmup",
        1,
        "Untimed runs of each implementation before the timed ones. The first "
        "run pays one-time costs (torch creates AdamW's moments, XLA's and "
        "torch's allocators grow); compilation happens before it.",
    )
    flags.DEFINE_list(
        "only", list(BENCHMARKS), f"Benchmarks to run, from {BENCHMARKS}."
    )
    flags.DEFINE_enum(
        "profile",
        "missed",
        ["missed", "all", "none"],
        "Training scenarios to profile by removal: those that miss a target, "
        "all, or none.",
    )


def results_path_for(page: Path) -> Path:
    """Return where the raw results of a page go: `a/b.md` -> `a/b/results.json`."""
    return page.with_suffix("") / "results.json"


def _display_path(path: Path) -> str:
    """Return `path` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(harness.REPO_ROOT))
    except ValueError:
        return str(path)


def write_outputs(results: dict, page: Path) -> None:
    results_path = results_path_for(page)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(report.render_page(results, page), encoding="utf-8")
    logger.info("Wrote %s and %s.", page, results_path)


def _profiles(settings: harness.Settings, results: dict, mode: str) -> list[dict]:
    if mode == "none":
        return []
    if mode == "all":
        chosen = [(s["config"], s["dropout"]) for s in results.get("training", [])]
    else:
        chosen = report.scenarios_to_profile(results)
    by_name = {shape.name: shape for shape in shapes.training_shapes(settings.quick)}
    return [
        training.run_profile(settings, by_name[config], dropout)
        for config, dropout in chosen
    ]


def run_suite(settings: harness.Settings, selected, page: Path, profile_mode: str):
    started = time.perf_counter()
    results = {
        "meta": {
            "command": " ".join(["python -m benchmarks.run_all", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M"
            ),
            "quick": settings.quick,
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "machine": harness.machine_info(settings.cpus),
            "results_path": _display_path(results_path_for(page)),
            "page_path": _display_path(page),
            "wall_seconds": 0.0,
        },
        "gpu": (
            json.loads(GPU_RECORD.read_text(encoding="utf-8"))
            if GPU_RECORD.is_file()
            else None
        ),
    }
    steps = {
        "peaks": lambda: peaks.run(settings),
        "training": lambda: training.run_training(settings),
        "inference": lambda: training.run_inference(settings),
        "rotary": lambda: rotary.run(settings),
        "long_context": lambda: long_context.run(settings),
        "compile": lambda: compile_time.run(settings),
    }
    for name in BENCHMARKS:
        if name not in selected:
            continue
        logger.info("=== %s ===", name)
        results[name] = steps[name]()
        if name == "training":
            results["profiles"] = _profiles(settings, results, profile_mode)
        results["meta"]["wall_seconds"] = time.perf_counter() - started
        write_outputs(results, page)
    return results


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; see --help.")
    unknown = sorted(set(FLAGS.only) - set(BENCHMARKS))
    if unknown:
        raise app.UsageError(
            f"--only names unknown benchmarks {unknown}; use {BENCHMARKS}."
        )
    quick = FLAGS.quick
    repeats = 2 if quick else 5
    if FLAGS.repeats is not None:
        repeats = FLAGS.repeats
    settings = harness.Settings(
        quick=quick,
        cpus=tuple(harness.resolve_cpus(FLAGS.threads)),
        warmup=FLAGS.warmup,
        repeats=repeats,
    )
    page = (
        Path(FLAGS.output)
        if FLAGS.output
        else (QUICK_OUTPUT if quick else DEFAULT_OUTPUT)
    )
    logger.info(
        "Benchmarks %s on CPUs %s, %d warm-up + %d timed runs, page %s.",
        FLAGS.only,
        list(settings.cpus),
        settings.warmup,
        settings.repeats,
        page,
    )
    run_suite(settings, set(FLAGS.only), page.resolve(), FLAGS.profile)


if __name__ == "__main__":
    define_flags()
    app.run(_main)
