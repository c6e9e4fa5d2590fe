"""Tables and plots of an ablation grid's `result.json` files.

Writes, under the grid's root: `ablation.csv` (one row per run),
`ablation.md` (mean and standard deviation over seeds), and three PNGs:
validation curves, loss against evaluation length, and loss against
position at the longest length.
"""

import collections
import csv
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mean_std(values: list[float]) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups = collections.defaultdict(list)
    for result in results:
        groups[(result["encoding"], result["size"])].append(result)
    return dict(groups)


def _extrapolation_keys(results: list[dict]) -> list[str]:
    keys = []
    for result in results:
        keys += [key for key in result["extrapolation"] if key not in keys]
    return keys


def _metric(result: dict, key: str, field: str):
    entry = result["extrapolation"].get(key)
    return None if entry is None else entry[field]


def write_csv(results: list[dict], path: str) -> None:
    keys = _extrapolation_keys(results)
    steps = sorted({step for r in results for step in r["eval_loss_by_step"]}, key=int)
    header = [
        "encoding",
        "size",
        "seed",
        "parameters",
        "final_eval_loss",
        "tokens_per_second",
    ]
    header += [f"eval_loss@step{step}" for step in steps]
    header += [f"loss@{key}" for key in keys] + [f"passkey@{key}" for key in keys]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for r in results:
            row = [
                r["encoding"],
                r["size"],
                r["seed"],
                r["parameters"],
                r["final_eval_loss"],
            ]
            row.append(r["tokens_per_second"])
            row += [r["eval_loss_by_step"].get(step) for step in steps]
            row += [_metric(r, key, "loss") for key in keys]
            row += [_metric(r, key, "passkey_accuracy") for key in keys]
            writer.writerow(row)


def _plain_keys(results: list[dict]) -> list[str]:
    return [key for key in _extrapolation_keys(results) if key.startswith("plain@")]


def _summary_table(results: list[dict]) -> list[str]:
    """Build one row per (encoding, size): mean ± std over seeds of each metric."""
    plain = _plain_keys(results)
    steps = sorted({step for r in results for step in r["eval_loss_by_step"]}, key=int)
    budgets = []
    if len(steps) >= 3:
        budgets = [steps[len(steps) // 3], steps[(2 * len(steps)) // 3]]

    header = "| encoding | size | seeds | parameters | final val loss |"
    header += "".join(f" val loss @ step {step} |" for step in budgets)
    header += "".join(f" loss @ {key.split('@')[1]} |" for key in plain)
    header += "".join(f" passkey @ {key.split('@')[1]} |" for key in plain)
    header += " tokens/s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    for (encoding, size), runs in sorted(_groups(results).items()):
        cells = [encoding, size, str(len(runs)), f"{runs[0]['parameters']:,}"]
        cells.append(_mean_std([r["final_eval_loss"] for r in runs]))
        for step in budgets:
            cells.append(_mean_std([r["eval_loss_by_step"].get(step) for r in runs]))
        for key in plain:
            cells.append(_mean_std([_metric(r, key, "loss") for r in runs]))
        for key in plain:
            cells.append(_mean_std([_metric(r, key, "passkey_accuracy") for r in runs]))
        cells.append(f"{statistics.median(r['tokens_per_second'] for r in runs):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rope_table(rope_runs: list[dict]) -> list[str]:
    """Loss of RoPE runs at each length, plain and with each rescaling."""
    rope_keys = _extrapolation_keys(rope_runs)
    multipliers = sorted(
        {key.split("@")[1] for key in rope_keys}, key=lambda m: int(m[:-1])
    )
    variants = sorted({key.split("@")[0] for key in rope_keys})
    lines = [
        "RoPE with each context-extension rescaling (loss, mean ± std over seeds):",
        "",
        "| rescaling | " + " | ".join(multipliers) + " |",
        "|---|" + "---|" * len(multipliers),
    ]
    for variant in variants:
        cells = [
            _mean_std([_metric(r, f"{variant}@{m}", "loss") for r in rope_runs])
            for m in multipliers
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(results: list[dict], path: str) -> None:
    lines = _summary_table(results)
    rope_runs = [r for r in results if r["encoding"] == "rope"]
    if rope_runs:
        lines += [""] + _rope_table(rope_runs)
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def _save(figure, axis, path: str, *, xlabel: str, ylabel: str) -> None:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(results: list[dict], path: str) -> None:
    figure, axis = plt.subplots(figsize=(8, 5))
    for (encoding, size), runs in sorted(_groups(results).items()):
        steps = sorted(runs[0]["eval_loss_by_step"], key=int)
        means = [
            np.mean(
                [r["eval_loss_by_step"][s] for r in runs if s in r["eval_loss_by_step"]]
            )
            for s in steps
        ]
        axis.plot(
            [int(s) for s in steps], means, marker=".", label=f"{encoding} ({size})"
        )
    _save(
        figure,
        axis,
        path,
        xlabel="step",
        ylabel="validation loss (nats/char), mean over seeds",
    )


def plot_lengths(results: list[dict], path: str) -> None:
    figure, axis = plt.subplots(figsize=(8, 5))
    keys = _extrapolation_keys(results)
    for (encoding, size), runs in sorted(_groups(results).items()):
        variants = sorted(
            {
                key.split("@")[0]
                for key in keys
                if any(key in r["extrapolation"] for r in runs)
            }
        )
        for variant in variants:
            points = []
            for key in keys:
                if not key.startswith(variant + "@"):
                    continue
                losses = [_metric(r, key, "loss") for r in runs]
                losses = [loss for loss in losses if loss is not None]
                if losses:
                    points.append(
                        (runs[0]["extrapolation"][key]["length"], np.mean(losses))
                    )
            if points:
                label = f"{encoding} ({size})"
                if variant != "plain":
                    label += f" + {variant}"
                style = "-" if variant == "plain" else "--"
                axis.plot(*zip(*points, strict=True), style, marker="o", label=label)
    axis.set_xscale("log", base=2)
    _save(
        figure,
        axis,
        path,
        xlabel="evaluation length (characters)",
        ylabel="validation loss (nats/char), mean over seeds",
    )


def plot_positions(results: list[dict], path: str) -> None:
    figure, axis = plt.subplots(figsize=(8, 5))
    plain = _plain_keys(results)
    for (encoding, size), runs in sorted(_groups(results).items()):
        available = [
            key
            for key in plain
            if all(_metric(r, key, "loss") is not None for r in runs)
        ]
        if not available:
            continue
        key = available[-1]
        curve = np.mean(
            [r["extrapolation"][key]["position_loss"] for r in runs], axis=0
        )
        window = max(len(curve) // 64, 1)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        axis.plot(smooth, label=f"{encoding} ({size}, {key.split('@')[1]})")
    _save(
        figure,
        axis,
        path,
        xlabel="position in window",
        ylabel="loss (nats/char), moving mean",
    )


def write_report(results: list[dict], root: str) -> None:
    """Write the CSV, Markdown and plots for `results` under `root`."""
    if not results:
        return
    os.makedirs(root, exist_ok=True)
    write_csv(results, os.path.join(root, "ablation.csv"))
    write_markdown(results, os.path.join(root, "ablation.md"))
    plot_curves(results, os.path.join(root, "ablation_curves.png"))
    plot_lengths(results, os.path.join(root, "ablation_lengths.png"))
    plot_positions(results, os.path.join(root, "ablation_positions.png"))
