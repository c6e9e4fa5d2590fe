"""Plot the loss curves of one or more runs from their metrics.jsonl files.

  python experiments/plot_curves.py --out docs/tiny_shakespeare_curve.png \
      RUN_DIR [RUN_DIR ...]

Writes a PNG with the training loss (per logged interval) and the validation
loss against step, and prints a Markdown table of the validation points.
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from roformer_jax.train.metrics import read_metrics  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [step for step, _ in points], [value for _, value in points]


def plot(run_dirs: list[str], out: str, target: float | None) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        rows = read_metrics(run_dir)
        name = pathlib.Path(run_dir).name
        axis.plot(*_series(rows, "train/loss"), alpha=0.5, label=f"{name} train")
        axis.plot(*_series(rows, "eval/loss"), marker="o", label=f"{name} validation")
        print(
            f"\n{name}\n\n| step | validation loss (nats/char) | bits/char | accuracy |\n|---|---|---|---|"
        )
        for row in rows:
            if "eval/loss" in row:
                print(
                    f"| {row['step']} | {row['eval/loss']:.4f} | "
                    f"{row['eval/bits_per_character']:.4f} | {row['eval/accuracy']:.4f} |"
                )
    if target is not None:
        axis.axhline(target, color="gray", linestyle="--", label=f"target {target}")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats per character)")
    axis.set_ylim(top=3.0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"\nWrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs", nargs="+", help="Workdirs that contain metrics.jsonl."
    )
    parser.add_argument("--out", required=True, help="Output PNG path.")
    parser.add_argument(
        "--target", type=float, default=None, help="Draw a horizontal target loss."
    )
    args = parser.parse_args()
    plot(args.run_dirs, args.out, args.target)


if __name__ == "__main__":
    main()
