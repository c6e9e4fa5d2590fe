"""Pre-train an encoder per position encoding, fine-tune each task and seed
from it, and write a summary table and plot.

  python -m experiments.finetune_suite --config=configs/finetune_suite.py:glue \
      --root=runs/glue_suite --config.paths.corpus=FILE \
      --config.paths.glue_dir=DIR

Every run goes through the package's trainer in its own workdir under
--root: `pretrain/ENCODING` and `LABEL/ENCODING/seedN`. A rerun skips
fine-tuning runs that wrote `result.json` and resumes the others from their
checkpoints, so an interrupted suite continues where it stopped.
"""

import json
import logging
import os
import statistics
import time

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from configs import finetune as finetune_configs
from configs import mlm_pretrain
from roformer_jax.train.trainer import train_and_evaluate
from roformer_jax.train.validation import validate_config, validate_suite_config

RESULT_FILENAME = "result.json"

logger = logging.getLogger(__name__)


def _apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    for group, values in dict(overrides).items():
        config[group].update(dict(values))


def pretrain_config(suite, encoding: str) -> ml_collections.ConfigDict:
    config = mlm_pretrain.get_config(
        f"{suite.pretrain_arg},size={suite.size},posenc={encoding}"
    )
    with config.unlocked():
        config.data.corpus_path = suite.paths.corpus
        _apply_overrides(config, suite.pretrain_overrides)
    return config


def finetune_config(
    suite, label: str, encoding: str, seed: int, init_workdir: str
) -> ml_collections.ConfigDict:
    """The config of one fine-tuning run, starting from `init_workdir`."""
    run = suite.runs[label]
    config = finetune_configs.get_config(
        f"{run.arg},size={suite.size},posenc={encoding}"
    )
    pretrained = pretrain_config(suite, encoding)
    with config.unlocked():
        config.seed = seed
        config.finetune.init_workdir = init_workdir
        config.data.manual_dir = suite.paths.glue_dir
        config.data.data_dir = suite.paths.tfds_dir
        if config.data.dataset == "cail2019_scm":
            config.data.corpus_path = suite.paths.corpus
        # The encoder must match the pre-trained one, except for a learned
        # table that is tiled to a longer fine-tuning length.
        config.model = pretrained.model.copy_and_resolve_references()
        if (
            encoding == "learned"
            and config.data.seq_len > config.model.max_position_embeddings
            and suite.extend_learned_positions
        ):
            config.model.max_position_embeddings = config.data.seq_len
            config.finetune.extend_position_embeddings = True
        _apply_overrides(config, run.overrides)
    return config


def _workdirs(root: str, label: str, encoding: str, seed: int) -> str:
    return os.path.join(root, label, encoding, f"seed{seed}")


def run_suite(suite, root: str) -> list[dict]:
    """Train whatever is missing under `root` and return every result.

    Every pre-training and fine-tuning config is validated first, so a bad
    fine-tuning setting fails before any pre-training runs.
    """
    validate_suite_config(suite)
    for encoding in suite.encodings:
        pre_dir = os.path.join(root, "pretrain", encoding)
        checked = [pretrain_config(suite, encoding)]
        checked += [
            finetune_config(suite, label, encoding, seed, pre_dir)
            for label in suite.runs
            for seed in suite.seeds
        ]
        for config in checked:
            validate_config(config, device_count=jax.device_count())
    results = []
    for encoding in suite.encodings:
        pre_dir = os.path.join(root, "pretrain", encoding)
        start = time.perf_counter()
        pre_metrics = train_and_evaluate(pretrain_config(suite, encoding), pre_dir)
        if pre_metrics:
            logger.info(
                "Pre-trained %s in %.0f s: %s",
                encoding,
                time.perf_counter() - start,
                pre_metrics,
            )
        for label in suite.runs:
            for seed in suite.seeds:
                workdir = _workdirs(root, label, encoding, seed)
                path = os.path.join(workdir, RESULT_FILENAME)
                if os.path.exists(path):
                    with open(path, encoding="utf-8") as file:
                        results.append(json.load(file))
                    continue
                config = finetune_config(suite, label, encoding, seed, pre_dir)
                start = time.perf_counter()
                metrics = train_and_evaluate(config, workdir)
                result = {
                    "label": label,
                    "encoding": encoding,
                    "seed": seed,
                    "seq_len": config.data.seq_len,
                    "seconds": time.perf_counter() - start,
                    **metrics,
                }
                with open(path, "w", encoding="utf-8") as file:
                    json.dump(result, file, indent=2)
                logger.info(
                    "Finished %s/%s seed %d: %s", label, encoding, seed, metrics
                )
                results.append(result)
    return results


def metric_names(results: list[dict]) -> list[str]:
    names = set()
    for result in results:
        names |= {
            key
            for key in result
            if key.startswith("eval/") and key not in ("eval/loss", "eval/examples")
        }
    return sorted(names)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (label, encoding, metric): mean, standard deviation, n."""
    rows = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        groups.setdefault((result["label"], result["encoding"]), []).append(result)
    for (label, encoding), group in sorted(groups.items()):
        for name in metric_names(group):
            values = [result[name] for result in group if name in result]
            rows.append(
                {
                    "label": label,
                    "encoding": encoding,
                    "metric": name.removeprefix("eval/"),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "runs": len(values),
                    "values": values,
                }
            )
    return rows


def markdown_table(rows: list[dict], encodings) -> str:
    """Rows are (task, metric); one column per encoding with mean ± std."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        cells.setdefault((row["label"], row["metric"]), {})[row["encoding"]] = (
            f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} (n={row['runs']})"
        )
    lines = [
        "| task | metric (×100) | " + " | ".join(encodings) + " |",
        "|---|---|" + "---|" * len(encodings),
    ]
    for (label, metric), by_encoding in cells.items():
        values = [by_encoding.get(encoding, "—") for encoding in encodings]
        lines.append(f"| {label} | {metric} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(rows: list[dict], encodings, path: str) -> None:
    """A bar per (task metric, encoding) with the seed spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(row["label"], row["metric"]) for row in rows})
    width = 0.8 / max(len(encodings), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.3 * len(keys)), 4))
    for index, encoding in enumerate(encodings):
        by_key = {
            (r["label"], r["metric"]): r for r in rows if r["encoding"] == encoding
        }
        means = [100 * by_key[key]["mean"] if key in by_key else 0 for key in keys]
        stds = [100 * by_key[key]["std"] if key in by_key else 0 for key in keys]
        axis.bar(
            [k + index * width for k in range(len(keys))],
            means,
            width,
            yerr=stds,
            capsize=3,
            label=encoding,
        )
    axis.set_xticks([k + width * (len(encodings) - 1) / 2 for k in range(len(keys))])
    axis.set_xticklabels([f"{label}\n{metric}" for label, metric in keys], fontsize=8)
    axis.set_ylabel("dev score × 100 (mean ± std over seeds)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: list[dict], suite, root: str) -> list[dict]:
    rows = summarize(results)
    encodings = list(suite.encodings)
    with open(os.path.join(root, "summary.md"), "w", encoding="utf-8") as file:
        file.write(markdown_table(rows, encodings))
    with open(os.path.join(root, "summary.json"), "w", encoding="utf-8") as file:
        json.dump({"rows": rows, "results": results}, file, indent=2)
    plot_summary(rows, encodings, os.path.join(root, "summary.png"))
    return rows


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags. Called only when run as a program,
    so that importing this module (tests do) defines no absl flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Suite config file with ':glue' or ':cail'.", lock_config=True
    )
    flags.DEFINE_string(
        "root", None, "Directory for every run's workdir and the report."
    )
    flags.mark_flags_as_required(["config", "root"])


def _main(argv) -> None:
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: record.name != "absl" or record.levelno >= logging.WARNING
        )
    start = time.perf_counter()
    results = run_suite(FLAGS.config, FLAGS.root)
    write_report(results, FLAGS.config, FLAGS.root)
    logger.info(
        "Suite finished in %.0f s; report in %s/summary.md.",
        time.perf_counter() - start,
        FLAGS.root,
    )


if __name__ == "__main__":
    define_flags()
    app.run(_main)
