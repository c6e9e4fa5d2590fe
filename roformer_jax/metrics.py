"""Evaluation metrics for classification and regression fine-tuning tasks.

Pure NumPy, computed in float64 on the host from arrays of predictions and
labels. Every metric returns a Python float and raises ValueError when the two
inputs differ in shape or are empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

Metric = Callable[[ArrayLike, ArrayLike], float]


def _paired_arrays(
    predictions: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as flat arrays after checking that their shapes match."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"Predictions have shape {predictions.shape} but labels have shape "
            f"{labels.shape}. Pass one prediction per label."
        )
    if predictions.size == 0:
        raise ValueError("Predictions and labels are empty. Pass at least one example.")
    return predictions.reshape(-1), labels.reshape(-1)


def _finite_float64(values: np.ndarray, name: str) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"{name} contain NaN or infinite values at positions "
            f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()}, but "
            "correlations need finite numbers."
        )
    return values


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Return the fraction of predictions equal to their label."""
    predictions, labels = _paired_arrays(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Return the binary F1 score with class 1 as the positive class.

    F1 = 2 TP / (2 TP + FP + FN), and 0.0 when the denominator is 0 (no positive
    predictions and no positive labels). Both inputs must contain only 0 and 1.
    """
    predictions, labels = _paired_arrays(predictions, labels)
    for name, values in (("predictions", predictions), ("labels", labels)):
        unexpected = np.setdiff1d(values, [0, 1])
        if unexpected.size:
            raise ValueError(
                f"Binary F1 expects {name} in {{0, 1}}, but found "
                f"{unexpected[:5].tolist()}. Map the classes to 0 and 1 first."
            )

    predicted_positive = predictions == 1
    actual_positive = labels == 1
    true_positives = np.sum(predicted_positive & actual_positive)
    false_positives = np.sum(predicted_positive & ~actual_positive)
    false_negatives = np.sum(~predicted_positive & actual_positive)
    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        return 0.0
    return float(2 * true_positives / denominator)


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Return the Matthews correlation coefficient for two or more classes.

    Uses Gorodkin's multiclass form, which equals the binary formula
    (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for two classes. Returns
    0.0 when the denominator is 0, for example when all predictions are the same.
    """
    predictions, labels = _paired_arrays(predictions, labels)
    classes, codes = np.unique(
        np.concatenate([predictions, labels]), return_inverse=True
    )
    predicted_codes = codes[: predictions.size]
    label_codes = codes[predictions.size :]

    predicted_counts = np.bincount(predicted_codes, minlength=classes.size)
    label_counts = np.bincount(label_codes, minlength=classes.size)
    predicted_counts = predicted_counts.astype(np.float64)
    label_counts = label_counts.astype(np.float64)
    correct = float(np.sum(predicted_codes == label_codes))
    total = float(predictions.size)

    numerator = correct * total - np.dot(predicted_counts, label_counts)
    denominator_squared = (total**2 - np.dot(predicted_counts, predicted_counts)) * (
        total**2 - np.dot(label_counts, label_counts)
    )
    if denominator_squared == 0:
        return 0.0
    return float(numerator / np.sqrt(denominator_squared))


def pearson(predictions: ArrayLike, targets: ArrayLike) -> float:
    """Return the Pearson correlation coefficient of predictions and targets.

    Returns NaN when either input is constant, because the correlation is then
    undefined (scipy.stats.pearsonr also returns NaN). Needs at least two values.
    """
    predictions, targets = _paired_arrays(predictions, targets)
    if predictions.size < 2:
        raise ValueError(
            f"Correlation needs at least 2 values, got {predictions.size}. "
            "Evaluate on more examples."
        )
    x = _finite_float64(predictions, "Predictions")
    y = _finite_float64(targets, "Targets")

    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0:
        return float("nan")
    # Rounding can push a perfect correlation slightly past +-1.
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of `values`, giving tied values the mean of their ranks."""
    _, group, group_sizes = np.unique(values, return_inverse=True, return_counts=True)
    group_ends = np.cumsum(group_sizes)
    group_starts = group_ends - group_sizes
    # A group occupies ranks starts+1 .. ends, whose mean is (starts + 1 + ends) / 2.
    mean_ranks = (group_starts + 1 + group_ends) / 2.0
    return mean_ranks[group]


def spearman(predictions: ArrayLike, targets: ArrayLike) -> float:
    """Return Spearman's rank correlation: Pearson's r of the average ranks.

    Ties get the mean of the ranks they span. Returns NaN when either input is
    constant, as `pearson` does.
    """
    predictions, targets = _paired_arrays(predictions, targets)
    x = _finite_float64(predictions, "Predictions")
    y = _finite_float64(targets, "Targets")
    return pearson(_average_ranks(x), _average_ranks(y))


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(
    names: Sequence[str], predictions: ArrayLike, labels: ArrayLike
) -> dict[str, float]:
    """Compute each metric in `names` (keys of METRICS) on the same inputs."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(
            f"Unknown metric names {unknown}. Choose from {sorted(METRICS)}."
        )
    return {name: METRICS[name](predictions, labels) for name in names}
