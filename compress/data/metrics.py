"""GLUE metrics: scikit-learn's F1 and Matthews correlation, scipy's Pearson and Spearman.

Degenerate inputs give 0.0 rather than NaN: a model that predicts one class everywhere
(common early in training or after aggressive pruning) has Matthews correlation 0, and a
constant regression output has Pearson/Spearman 0. A NaN would break best-epoch selection
and JSON summaries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score
from sklearn.metrics import matthews_corrcoef as sklearn_matthews

from compress.data.tasks import TaskSpec


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predicted class ids equal to the labels."""
    predictions, labels = _check_pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class; 0.0 when there is no true positive.

    Class ids beyond two (e.g. {0, 1, 2}) are scikit-learn's ValueError, not a count of 1 vs the rest.
    """
    predictions, labels = _check_pair(predictions, labels)
    return float(f1_score(labels, predictions, pos_label=1, zero_division=0))


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004); 0.0 if either side is constant."""
    predictions, labels = _check_pair(predictions, labels)
    if _is_constant(predictions) or _is_constant(labels):  # sklearn gives 0.0 too, but warns on one label
        return 0.0
    return float(sklearn_matthews(labels, predictions))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either input is constant."""
    x, y = _check_pair(predictions, labels)
    if _is_constant(x) or _is_constant(y):  # scipy would warn and return NaN
        return 0.0
    return float(pearsonr(x.astype(np.float64), y.astype(np.float64)).statistic)  # clipped to [-1, 1]


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); 0.0 when either input is constant."""
    x, y = _check_pair(predictions, labels)
    if _is_constant(x) or _is_constant(y):  # scipy would warn and return NaN
        return 0.0
    return float(spearmanr(x, y).statistic)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score model outputs on a task; keys are exactly `task.metrics`.

    predictions: logits (N, C) for classification (argmax is taken; an (N,) array is read
    as class ids already), or scores (N,) / (N, 1) for regression.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise ValueError(f"regression predictions must be (N,) or (N, 1), got {predictions.shape}")
        predictions = predictions.astype(np.float64)
    elif predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    elif predictions.ndim != 1:
        raise ValueError(f"classification predictions must be (N, C) or (N,), got {predictions.shape}")
    return {name: METRICS[name](predictions, labels) for name in task.metrics}


def _check_pair(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return predictions, labels


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))
