r"""Where our masked-LM train step spends its time, op by op.

  python -m benchmarks.op_profile [--configs=A,B] [--dropouts=0.1,0] \
      [--runs=3] [--output=docs/benchmarks/op_profile.md] [--quick]

For each scenario it compiles the train step of `benchmarks/shapes.py`
(the same one as the training benchmark, through `jax_sessions`), runs it
twice untimed, then `--runs` times under `jax.profiler.trace`. The trace
contains one event per executed XLA instruction (a fusion, a dot, a copy...).
Each instruction is named in the optimized HLO, whose metadata records the
model operation it came from (`.../layer_0/attention/query/dot_general`).
The page sums the events by part of the model (`CATEGORIES`) and by
direction (forward, backward, optimizer), and lists the costliest
instructions.

Times are the sum of the instructions' own durations, per step. XLA's CPU
runtime runs independent instructions concurrently, so the sum can exceed
the step's wall-clock time, which the page gives beside it.
"""

import collections
import dataclasses
import datetime
import glob
import gzip
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import harness, shapes

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = harness.REPO_ROOT / "docs" / "benchmarks" / "op_profile.md"
# --quick writes here unless --output is given, so it cannot replace the page.
QUICK_OUTPUT = Path("/tmp/roformer_jax_op_profile_quick/op_profile.md")

# (label, pattern on the HLO op_name); the first match names the category.
CATEGORIES = (
    (
        "dropout masks (threefry random bits)",
        r"bernoulli|_uniform|threefry|random_bits",
    ),
    ("dropout (apply)", r"/Dropout_\d+/|dropout"),
    ("rotary position encoding", r"/position\.transform/"),
    ("LM head (tied output projection)", r"/lm_head/"),
    ("attention matmuls (QK, weights x V)", r"/attention/[a-z,]+->[a-z]+/dot_general"),
    ("q, k, v and output projections", r"/attention/.*(query|key|value|output)/"),
    ("attention softmax and mask", r"/attention/"),
    ("feed-forward matmuls", r"/feed_forward/(intermediate|output)/dot_general"),
    ("feed-forward GELU and bias", r"/feed_forward/"),
    ("LayerNorm", r"layer_norm"),
    ("embeddings", r"/embeddings/"),
    ("residual adds and the rest of the blocks", r"/transformer/layer_\d+/"),
)
LOSS_LABEL = "loss (softmax cross-entropy)"
OPTIMIZER_LABEL = "optimizer, clipping and metrics"
OTHER_LABEL = "other"

_INSTRUCTION = re.compile(
    r"^\s+(?:ROOT )?%?([\w.\-]+) = \S+ [\w\-]+\(.*?op_name=\"([^\"]*)\"", re.M
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("configs", ["A", "B"], "Training shapes to profile: A, B.")
    flags.DEFINE_list("dropouts", ["0.1", "0"], "Dropout rates to profile.")
    flags.DEFINE_integer("runs", 3, "Traced steps per scenario.")
    flags.DEFINE_integer("top", 15, "Costliest instructions listed per scenario.")
    flags.DEFINE_bool("quick", False, "Tiny models, to check that the tool works.")
    flags.DEFINE_string(
        "output",
        None,
        "Markdown page; the raw results go beside it as .json. Default: "
        "docs/benchmarks/op_profile.md, or under /tmp with --quick.",
    )


def instruction_ops(hlo_text: str) -> dict[str, str]:
    """Map each instruction name of an optimized HLO module to its op_name."""
    return {name: op for name, op in _INSTRUCTION.findall(hlo_text)}


def direction(op_name: str) -> str:
    """Return "backward", "forward" or "optimizer" for a train-step op_name.

    `jax.value_and_grad` names forward ops `jvp(...)` and backward ops
    `transpose(jvp(...))`; the update after it carries neither.
    """
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer"


def category(op_name: str) -> str:
    """Return the part of the model (a `CATEGORIES` label) an op belongs to."""
    if direction(op_name) == "optimizer":
        return OPTIMIZER_LABEL
    for label, pattern in CATEGORIES:
        if re.search(pattern, op_name):
            return label
    if "LanguageModel" not in op_name:
        return LOSS_LABEL  # Ops of the loss are outside the model's scope.
    return OTHER_LABEL


def instruction_seconds(trace_dir: str, ops: dict[str, str], runs: int) -> dict:
    """Sum the traced duration of each HLO instruction, per step, in seconds."""
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not files:
        raise FileNotFoundError(
            f"jax.profiler.trace wrote no *.trace.json.gz under {trace_dir}."
        )
    with gzip.open(files[0], "rt", encoding="utf-8") as file:
        events = json.load(file)["traceEvents"]
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in ops:
            totals[event["name"]] += event["dur"] * 1e-6 / runs
    return dict(totals)


def summarize(seconds: dict[str, float], ops: dict[str, str], top: int) -> dict:
    """Group instruction times by category and direction; list the top ones."""
    by_category: collections.Counter = collections.Counter()
    by_direction: collections.Counter = collections.Counter()
    for name, value in seconds.items():
        by_category[category(ops[name])] += value
        by_direction[direction(ops[name])] += value
    costliest = sorted(seconds.items(), key=lambda item: -item[1])[:top]
    return {
        "total_seconds": sum(seconds.values()),
        "by_category": dict(by_category.most_common()),
        "by_direction": dict(by_direction.most_common()),
        "costliest": [
            {"instruction": name, "seconds": value, "op_name": ops[name]}
            for name, value in costliest
        ],
    }


@dataclasses.dataclass(frozen=True)
class Scenario:
    shape: shapes.ModelShape
    dropout: float


def profile(scenario: Scenario, runs: int, top: int) -> dict:
    """Trace `runs` train steps of one scenario and summarize them."""
    import jax

    from benchmarks import jax_sessions

    session = jax_sessions.OursLanguageModel(
        scenario.shape.to_dict(), scenario.dropout, "train", "full"
    )
    for _ in range(2):
        session.run()
    ops = instruction_ops(session._compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            walls = [session.run()["seconds"] for _ in range(runs)]
        logger.info(
            "Traced %d steps of config %s in %.1f s.",
            runs,
            scenario.shape.name,
            time.perf_counter() - start,
        )
        seconds = instruction_seconds(trace_dir, ops, runs)
    return {
        "config": scenario.shape.name,
        "shape": scenario.shape.to_dict(),
        "dropout": scenario.dropout,
        "step_seconds": statistics.median(walls),
        **summarize(seconds, ops, top),
    }


def _milliseconds(value: float) -> str:
    return f"{1000 * value:,.1f}"


def render(results: list[dict], meta: dict) -> str:
    """Build the Markdown page of one run."""
    lines = [
        "# Where the train step spends its time",
        "",
        "Made by `benchmarks/op_profile.py` (its docstring explains the method); "
        "the training benchmark is on [the main page](../benchmarks.md).",
        "",
        f"- **Command:** `{meta['command']}`",
        f"- **Machine:** {meta['machine']}",
        f"- **Date:** {meta['date']} UTC",
        "",
        "Times are milliseconds per step: the sum of the traced XLA "
        "instructions of each part, which can exceed the step's wall-clock "
        "time because the CPU runtime overlaps independent instructions.",
    ]
    for result in results:
        total = result["total_seconds"]
        lines += [
            "",
            f"## Config {result['config']}, dropout {result['dropout']:g}",
            "",
            f"Step wall-clock (median of the traced steps): "
            f"{_milliseconds(result['step_seconds'])} ms; instructions summed: "
            f"{_milliseconds(total)} ms. By direction: "
            + ", ".join(
                f"{name} {_milliseconds(value)} ms"
                for name, value in result["by_direction"].items()
            )
            + ".",
            "",
            "| part | ms per step | share |",
            "|---|---:|---:|",
        ]
        for name, value in result["by_category"].items():
            lines.append(
                f"| {name} | {_milliseconds(value)} | {100 * value / total:.1f}% |"
            )
        lines += [
            "",
            "Costliest instructions:",
            "",
            "| instruction | ms per step | model operation |",
            "|---|---:|---|",
        ]
        for row in result["costliest"]:
            op_name = row["op_name"].replace("|", "\\|")
            lines.append(
                f"| `{row['instruction']}` | {_milliseconds(row['seconds'])} | "
                f"`{op_name}` |"
            )
    return "\n".join(lines) + "\n"


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; see --help.")

    by_name = {shape.name: shape for shape in shapes.training_shapes(FLAGS.quick)}
    unknown = sorted(set(FLAGS.configs) - set(by_name))
    if unknown:
        raise app.UsageError(
            f"--configs has unknown shapes {unknown}; use {sorted(by_name)}."
        )
    try:
        dropouts = [float(value) for value in FLAGS.dropouts]
    except ValueError as error:
        raise app.UsageError(
            f"--dropouts={FLAGS.dropouts} is invalid ({error}); use numbers such "
            "as 0.1,0."
        ) from None

    harness.pin_to_cpus(harness.resolve_cpus(None))
    results = [
        profile(Scenario(by_name[name], dropout), FLAGS.runs, FLAGS.top)
        for name in FLAGS.configs
        for dropout in dropouts
    ]

    default = QUICK_OUTPUT if FLAGS.quick else DEFAULT_OUTPUT
    output = Path(FLAGS.output) if FLAGS.output else default
    meta = {
        "command": " ".join(["python -m benchmarks.op_profile", *sys.argv[1:]]),
        "machine": harness.cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(results, meta), encoding="utf-8")
    output.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n",
        encoding="utf-8",
    )
    logger.info("Wrote %s.", output)


if __name__ == "__main__":
    define_flags()
    app.run(_main)
