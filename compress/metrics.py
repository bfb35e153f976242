"""GLUE metrics in plain numpy/scipy.

Degenerate inputs give 0.0 rather than NaN: a model that predicts one class everywhere
(common early in training or after aggressive pruning) has Matthews correlation 0, and a
constant regression output has Pearson/Spearman 0. A NaN would break best-epoch selection
and JSON summaries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from compress.tasks import TaskSpec


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predicted class ids equal to the labels."""
    predictions, labels = _check_pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class; 0.0 when there is no true positive."""
    predictions, labels = _check_pair(predictions, labels)
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    fp = float(np.sum((predictions == 1) & (labels != 1)))
    fn = float(np.sum((predictions != 1) & (labels == 1)))
    if tp == 0.0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004); 0.0 if either side is constant."""
    predictions, labels = _check_pair(predictions, labels)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    n, k = len(labels), len(classes)
    true_ids, pred_ids = encoded[:n], encoded[n:]
    confusion = np.zeros((k, k), dtype=np.float64)  # rows: true, columns: predicted
    np.add.at(confusion, (true_ids, pred_ids), 1.0)
    t = confusion.sum(axis=1)  # times each class truly occurred
    p = confusion.sum(axis=0)  # times each class was predicted
    c, s = np.trace(confusion), float(n)
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    if denominator == 0.0:
        return 0.0
    return float((c * s - t @ p) / denominator)


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either input is constant."""
    x, y = _check_pair(predictions, labels)
    x = x.astype(np.float64) - np.mean(x)
    y = y.astype(np.float64) - np.mean(y)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    if denominator == 0.0:
        return 0.0
    return float(np.clip(np.sum(x * y) / denominator, -1.0, 1.0))


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); 0.0 when either input is constant."""
    x, y = _check_pair(predictions, labels)
    return pearson(rankdata(x), rankdata(y))


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
