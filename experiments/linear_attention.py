"""Compare a Performer with and without RoPE and softmax attention with
RoPE on a byte-level corpus, over several seeds, with the same budget.

  python -m experiments.linear_attention --root=runs/linear_attention \
      --manual_dir=../shared/data/enwiki_excerpt \
      --source_file=enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2

Every run goes through the package's trainer with `configs/enwik8.py` in
its own workdir under --root; a rerun skips finished runs. The report is
`results.md` (final validation bits per byte, mean ± std over seeds) and
`curves.png` (validation bits per byte against step).
"""

import json
import logging
import os
import statistics
import time

from absl import app, flags

from configs import enwik8 as enwik8_config
from roformer_jax.train.metrics import read_metrics
from roformer_jax.train.trainer import train_and_evaluate

# Label -> config variant. Without RoPE the Performer gets learned absolute
# positions, so every variant has some position signal.
VARIANTS = {
    "performer_rope": "attention=linear,posenc=rope",
    "performer_learned": "attention=linear,posenc=learned",
    "softmax_rope": "attention=softmax,posenc=rope",
}
RESULT_FILENAME = "result.json"

logger = logging.getLogger(__name__)


def run_config(variant: str, seed: int, flags_values: dict, smoke: bool):
    arg = VARIANTS[variant] + (",smoke" if smoke else "")
    config = enwik8_config.get_config(arg)
    with config.unlocked():
        config.seed = seed
        config.data.manual_dir = flags_values["manual_dir"]
        config.data.source_file = flags_values["source_file"]
        config.data.data_dir = flags_values["data_dir"]
        config.train.tensorboard = False
    return config


def run_all(root: str, seeds, flags_values: dict, smoke: bool = False) -> list[dict]:
    results = []
    for variant in VARIANTS:
        for seed in seeds:
            workdir = os.path.join(root, variant, f"seed{seed}")
            path = os.path.join(workdir, RESULT_FILENAME)
            if not os.path.exists(path):
                start = time.perf_counter()
                config = run_config(variant, seed, flags_values, smoke)
                metrics = train_and_evaluate(config, workdir)
                rates = [
                    row["perf/tokens_per_second"]
                    for row in read_metrics(workdir)
                    if "perf/tokens_per_second" in row
                ]
                result = {
                    "variant": variant,
                    "seed": seed,
                    "seconds": time.perf_counter() - start,
                    "tokens_per_second": statistics.median(rates),
                    "curve": [
                        [row["step"], row["eval/bits_per_byte"]]
                        for row in read_metrics(workdir)
                        if "eval/bits_per_byte" in row
                    ],
                    **metrics,
                }
                with open(path, "w", encoding="utf-8") as file:
                    json.dump(result, file, indent=2)
            with open(path, encoding="utf-8") as file:
                results.append(json.load(file))
    return results


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| variant | validation bits/byte (mean ± std) | runs | tokens/s (median) |",
        "|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        values = [r["eval/bits_per_byte"] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        speed = statistics.median(r["tokens_per_second"] for r in rows)
        lines.append(
            f"| {variant} | {statistics.fmean(values):.4f} ± {spread:.4f} | "
            f"{len(rows)} | {speed:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for index, variant in enumerate(VARIANTS):
        for result in (r for r in results if r["variant"] == variant):
            steps, values = zip(*result["curve"], strict=True)
            axis.plot(
                steps,
                values,
                color=f"C{index}",
                alpha=0.8,
                label=variant if result["seed"] == 0 else None,
            )
    axis.set_xlabel("training step")
    axis.set_ylabel("validation bits per byte")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags. Called only when run as a program,
    so that importing this module (tests do) defines no absl flags."""
    flags.DEFINE_string("root", None, "Directory for the runs and the report.")
    flags.DEFINE_string("manual_dir", None, "Folder with enwik8.zip or the dump.")
    flags.DEFINE_string("source_file", None, "Dump in --manual_dir to use for enwik8.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir; None: the TFDS default.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each variant.")
    flags.DEFINE_bool("smoke", False, "Seconds-long runs, for tests.")
    flags.mark_flags_as_required(["root"])


def _main(argv) -> None:
    del argv
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: record.name != "absl" or record.levelno >= logging.WARNING
        )
    values = {
        "manual_dir": FLAGS.manual_dir,
        "source_file": FLAGS.source_file,
        "data_dir": FLAGS.data_dir,
    }
    results = run_all(FLAGS.root, [int(s) for s in FLAGS.seeds], values, FLAGS.smoke)
    with open(os.path.join(FLAGS.root, "results.md"), "w", encoding="utf-8") as file:
        file.write(markdown_table(results))
    plot_curves(results, os.path.join(FLAGS.root, "curves.png"))
    logger.info("Report in %s/results.md and curves.png.", FLAGS.root)


if __name__ == "__main__":
    define_flags()
    app.run(_main)
