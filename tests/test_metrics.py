"""Tests for roformer_jax.metrics against scipy and float64 reference formulas."""

import math

import numpy as np
import pytest
import scipy.stats

from roformer_jax import metrics


def _reference_mcc(predictions, labels) -> float:
    """Multiclass MCC from an explicit float64 confusion matrix."""
    classes = sorted(set(np.asarray(predictions).tolist()) | set(labels.tolist()))
    index = {value: i for i, value in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for predicted, actual in zip(predictions, labels, strict=True):
        confusion[index[actual], index[predicted]] += 1

    total = confusion.sum()
    correct = np.trace(confusion)
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    covariance_xy = correct * total - true_counts @ predicted_counts
    covariance_xx = total**2 - predicted_counts @ predicted_counts
    covariance_yy = total**2 - true_counts @ true_counts
    if covariance_xx * covariance_yy == 0:
        return 0.0
    return covariance_xy / math.sqrt(covariance_xx * covariance_yy)


def _binary_mcc_from_counts(predictions, labels) -> float:
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def _reference_f1(predictions, labels) -> float:
    tp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == 1 and y != 1)
    fn = sum(1 for p, y in zip(predictions, labels, strict=True) if p != 1 and y == 1)
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


# --- accuracy ----------------------------------------------------------------


def test_accuracy_counts_matches():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=1000)
    predictions = rng.integers(0, 3, size=1000)
    expected = sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / 1000

    result = metrics.accuracy(predictions, labels)

    assert isinstance(result, float)
    assert result == pytest.approx(expected, abs=1e-12)


def test_accuracy_perfect_and_inverted():
    labels = np.array([0, 1, 1, 0, 1])

    assert metrics.accuracy(labels, labels) == 1.0
    assert metrics.accuracy(1 - labels, labels) == 0.0


def test_accuracy_accepts_lists():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(0.5)


# --- f1 ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_f1_matches_counts(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=500)
    predictions = rng.integers(0, 2, size=500)

    result = metrics.f1(predictions, labels)

    assert isinstance(result, float)
    assert result == pytest.approx(_reference_f1(predictions, labels), abs=1e-12)


def test_f1_perfect_and_inverted():
    labels = np.array([0, 1, 1, 0, 1, 0])

    assert metrics.f1(labels, labels) == 1.0
    assert metrics.f1(1 - labels, labels) == 0.0


def test_f1_no_positives_is_zero():
    zeros = np.zeros(8, dtype=np.int64)

    assert metrics.f1(zeros, zeros) == 0.0


def test_f1_constant_positive_prediction():
    labels = np.array([1, 0, 0, 1, 0])
    predictions = np.ones(5, dtype=np.int64)

    # TP = 2, FP = 3, FN = 0.
    assert metrics.f1(predictions, labels) == pytest.approx(4 / 7)


def test_f1_accepts_bool():
    labels = np.array([True, False, True])
    predictions = np.array([True, True, False])

    assert metrics.f1(predictions, labels) == pytest.approx(0.5)


def test_f1_rejects_non_binary():
    with pytest.raises(ValueError, match=r"\[2\]"):
        metrics.f1([0, 1, 2], [0, 1, 1])


# --- matthews_corrcoef -------------------------------------------------------


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_mcc_binary_matches_counts(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=400)
    # Correlated predictions: flip 30% of the labels.
    flips = rng.random(400) < 0.3
    predictions = np.where(flips, 1 - labels, labels)

    result = metrics.matthews_corrcoef(predictions, labels)

    assert isinstance(result, float)
    assert result == pytest.approx(_binary_mcc_from_counts(predictions, labels))
    assert result == pytest.approx(_reference_mcc(predictions, labels))


@pytest.mark.parametrize("seed", [7, 8])
def test_mcc_multiclass_matches_confusion(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=600)
    predictions = np.where(rng.random(600) < 0.5, labels, rng.integers(0, 4, size=600))

    result = metrics.matthews_corrcoef(predictions, labels)

    assert result == pytest.approx(_reference_mcc(predictions, labels), abs=1e-12)


def test_mcc_multiclass_string_labels():
    labels = np.array(["a", "b", "c", "a", "b", "c", "a"])
    predictions = np.array(["a", "c", "c", "b", "b", "a", "a"])

    result = metrics.matthews_corrcoef(predictions, labels)

    assert result == pytest.approx(_reference_mcc(predictions, labels))


def test_mcc_class_only_in_predictions():
    labels = np.array([0, 0, 1, 1, 0])
    predictions = np.array([0, 2, 1, 1, 0])

    result = metrics.matthews_corrcoef(predictions, labels)

    assert result == pytest.approx(_reference_mcc(predictions, labels))


def test_mcc_constant_predictions_zero():
    labels = np.array([0, 1, 1, 0, 1])

    assert metrics.matthews_corrcoef(np.ones(5, dtype=int), labels) == 0.0
    assert metrics.matthews_corrcoef(np.zeros(5, dtype=int), labels) == 0.0


def test_mcc_perfect_and_inverted():
    labels = np.array([0, 1, 1, 0, 1, 0, 0])

    assert metrics.matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - labels, labels) == pytest.approx(-1.0)


# --- pearson and spearman ----------------------------------------------------


@pytest.mark.parametrize("seed", [9, 10, 11])
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, 5, size=300)
    predictions = targets + rng.normal(0, 1.5, size=300)

    result = metrics.pearson(predictions, targets)

    assert isinstance(result, float)
    assert result == pytest.approx(scipy.stats.pearsonr(predictions, targets)[0])


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, 5, size=300)
    predictions = targets + rng.normal(0, 1.5, size=300)

    result = metrics.spearman(predictions, targets)

    assert isinstance(result, float)
    assert result == pytest.approx(scipy.stats.spearmanr(predictions, targets)[0])


@pytest.mark.parametrize("seed", [15, 16])
def test_spearman_ties_match_scipy(seed):
    rng = np.random.default_rng(seed)
    # Scores rounded to 0.2 steps, like STS-B, so both sides have many ties.
    targets = np.round(rng.uniform(0, 5, size=200) * 5) / 5
    predictions = np.round(targets + rng.normal(0, 1.0, size=200))

    result = metrics.spearman(predictions, targets)

    assert result == pytest.approx(scipy.stats.spearmanr(predictions, targets)[0])


def test_spearman_ties_small_case():
    predictions = [1.0, 2.0, 2.0, 3.0]
    targets = [1.0, 3.0, 2.0, 4.0]
    # Average ranks: predictions [1, 2.5, 2.5, 4], targets [1, 3, 2, 4].
    x = np.array([1.0, 2.5, 2.5, 4.0]) - 2.5
    y = np.array([1.0, 3.0, 2.0, 4.0]) - 2.5
    expected = float(x @ y / math.sqrt((x @ x) * (y @ y)))

    assert metrics.spearman(predictions, targets) == pytest.approx(expected)


def test_spearman_monotonic_is_one():
    targets = np.array([0.5, 1.0, 2.0, 4.0, 8.0])

    assert metrics.spearman(np.exp(targets), targets) == pytest.approx(1.0)
    assert metrics.spearman(-(targets**3), targets) == pytest.approx(-1.0)


def test_pearson_perfect_and_inverted():
    targets = np.array([0.0, 1.2, 3.3, 4.1, 5.0])

    assert metrics.pearson(2 * targets + 1, targets) == pytest.approx(1.0)
    assert metrics.pearson(-targets, targets) == pytest.approx(-1.0)


def test_correlation_constant_is_nan():
    targets = np.array([0.0, 1.0, 2.0])
    constant = np.full(3, 2.5)

    assert math.isnan(metrics.pearson(constant, targets))
    assert math.isnan(metrics.spearman(constant, targets))


def test_correlation_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        metrics.pearson([0.0, float("nan"), 1.0], [0.0, 1.0, 2.0])


def test_correlation_rejects_single_value():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.pearson([1.0], [2.0])


# --- shapes and registry -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_shape_mismatch_names_shapes(name):
    with pytest.raises(ValueError) as raised:
        metrics.METRICS[name](np.zeros(3), np.zeros(4))

    assert "(3,)" in str(raised.value)
    assert "(4,)" in str(raised.value)


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_empty_inputs_rejected(name):
    with pytest.raises(ValueError, match="empty"):
        metrics.METRICS[name]([], [])


def test_compute_metrics_by_name():
    predictions = np.array([1, 0, 1, 1, 0, 1])
    labels = np.array([1, 0, 0, 1, 1, 1])

    result = metrics.compute_metrics(("accuracy", "f1"), predictions, labels)

    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["f1"] == pytest.approx(_reference_f1(predictions, labels))


def test_compute_metrics_unknown_name():
    with pytest.raises(ValueError, match="'bleu'"):
        metrics.compute_metrics(["bleu"], [1], [1])
