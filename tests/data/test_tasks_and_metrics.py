"""GLUE task specs and metrics; expected metric values are worked out by hand below."""

import math
import warnings

import numpy as np
import pytest

from compress.data.metrics import (
    accuracy,
    compute_metrics,
    f1,
    matthews_corrcoef,
    pearson,
    spearman,
)
from compress.data.tasks import TASKS, get_task
from compress.errors import UserError

# ---------------------------------------------------------------- tasks


def test_all_nine_tasks_are_defined():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    for name, task in TASKS.items():
        assert task.name == name == task.hub_config
        assert task.main_metric in task.metrics
        assert len(task.text_columns) == len(task.hub_text_columns) in (1, 2)
        assert set(task.eval_files) == set(task.hub_eval_splits)
        hash(task)  # usable as a cache key


@pytest.mark.parametrize(
    "name, main_metric, num_labels",
    [
        ("cola", "matthews", 2),
        ("sst2", "accuracy", 2),
        ("mrpc", "f1", 2),
        ("qqp", "f1", 2),
        ("stsb", "pearson", 1),
        ("mnli", "accuracy", 3),
        ("qnli", "accuracy", 2),
        ("rte", "accuracy", 2),
        ("wnli", "accuracy", 2),
    ],
)
def test_main_metric_and_label_count_follow_glue(name, main_metric, num_labels):
    task = get_task(name)
    assert task.main_metric == main_metric
    assert task.num_labels == num_labels
    assert task.is_regression == (name == "stsb")


def test_label_order_matches_the_hub_integers():
    # nyu-mll/glue: mnli 0 entailment, 1 neutral, 2 contradiction; qnli/rte 0 entailment.
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("rte").labels == ("entailment", "not_entailment")
    assert get_task("sst2").labels == ("0", "1")


def test_mnli_has_two_eval_splits_and_matched_is_main():
    task = get_task("mnli")
    assert task.eval_files == {
        "validation_matched": "dev_matched.tsv",
        "validation_mismatched": "dev_mismatched.tsv",
    }
    assert task.main_eval_split == "validation_matched"
    assert get_task("sst2").main_eval_split == "validation"


def test_unknown_task_names_it_and_lists_valid_ones():
    with pytest.raises(UserError) as info:
        get_task("sst3")
    message = str(info.value)
    assert "'sst3'" in message and "sst2" in message and "mnli" in message
    assert "\n" not in message


# ---------------------------------------------------------------- metrics


def test_accuracy():
    # 3 of 4 equal -> 0.75
    assert accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75


def test_f1_positive_class_is_one():
    # tp = 2 (positions 0, 3), fp = 1 (position 1), fn = 1 (position 4)
    # F1 = 2tp / (2tp + fp + fn) = 4 / 6
    predictions = np.array([1, 1, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1])
    assert f1(predictions, labels) == pytest.approx(4 / 6)


def test_f1_without_true_positives_is_zero():
    assert f1(np.array([0, 0, 0]), np.array([0, 0, 0])) == 0.0
    assert f1(np.array([1, 1, 0]), np.array([0, 0, 1])) == 0.0


def test_matthews_binary_from_a_confusion_matrix():
    #               predicted 1  predicted 0
    # true 1        TP = 3       FN = 1
    # true 0        FP = 2       TN = 4
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    #     = (12 - 2) / sqrt(5 * 4 * 6 * 5) = 10 / sqrt(600) = 0.4082483
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    predictions = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    assert matthews_corrcoef(predictions, labels) == pytest.approx(10 / math.sqrt(600))
    assert matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - labels, labels) == pytest.approx(-1.0)


def test_matthews_multiclass():
    # Each class: 2 true, 2 predicted, 1 correct. c = 3 correct, s = 6 samples,
    # t = p = (2, 2, 2): (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (18 - 12) / 24 = 0.25
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 2, 2, 0])
    assert matthews_corrcoef(predictions, labels) == pytest.approx(0.25)


def test_matthews_constant_prediction_is_zero_not_nan():
    assert matthews_corrcoef(np.array([1, 1, 1, 1]), np.array([0, 1, 0, 1])) == 0.0


def test_pearson():
    # x - mean = (-1, 0, 1); y = (2, 4, 7), y - mean = (-7/3, -1/3, 8/3)
    # sum xy = 5, sum x^2 = 2, sum y^2 = 114/9 -> r = 5 / sqrt(228/9) = 15 / sqrt(228)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])) == pytest.approx(15 / math.sqrt(228))


def test_spearman_without_and_with_ties():
    # ranks of y = (1, 3, 2, 4), d = (0, -1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(0.8)
    # x ranks (1, 2.5, 2.5, 4): deviations (-1.5, 0, 0, 1.5) vs (-1.5, -0.5, 0.5, 1.5)
    # -> 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(4.5 / math.sqrt(22.5))


def test_correlations_with_constant_input_are_zero():
    constant, varied = np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0])
    for metric in (pearson, spearman):
        assert metric(constant, varied) == 0.0
        assert metric(varied, constant) == 0.0


def test_degenerate_inputs_give_zero_without_warnings():
    # the libraries warn here (scikit-learn: one label, no positive; scipy: constant input)
    ones, zeros, varied = np.ones(4), np.zeros(4), np.array([0.0, 1.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f1(zeros, zeros) == 0.0
        assert matthews_corrcoef(ones, ones) == 0.0
        assert matthews_corrcoef(varied, zeros) == 0.0
        for metric in (pearson, spearman):
            assert metric(ones, varied) == 0.0
            assert metric(np.array([1.0]), np.array([2.0])) == 0.0  # one example: constant


def test_metrics_reject_mismatched_or_empty_inputs():
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        accuracy(np.array([]), np.array([]))


def test_compute_metrics_takes_argmax_of_logits():
    # argmax = (1, 0, 1, 1) vs labels (1, 0, 0, 1): accuracy 3/4;
    # tp = 2, fp = 1, fn = 0 -> F1 = 4 / 5
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0]], dtype=np.float32)
    result = compute_metrics(get_task("mrpc"), logits, np.array([1, 0, 0, 1]))
    assert list(result) == ["accuracy", "f1"]
    assert result == {"accuracy": pytest.approx(0.75), "f1": pytest.approx(0.8)}
    assert all(type(v) is float for v in result.values())


def test_compute_metrics_three_classes_and_cola():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    assert compute_metrics(get_task("mnli"), logits, np.array([0, 2, 2])) == {
        "accuracy": pytest.approx(2 / 3)
    }
    result = compute_metrics(get_task("cola"), np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 0]))
    assert result == {"matthews": pytest.approx(1.0)}


def test_compute_metrics_regression_accepts_n_and_n_by_1():
    task = get_task("stsb")
    labels = np.array([10.0, 30.0, 20.0, 40.0])
    column = np.array([[1.0], [2.0], [3.0], [4.0]])
    for predictions in (column, column[:, 0]):
        result = compute_metrics(task, predictions, labels)
        assert list(result) == ["pearson", "spearman"]
        assert result["spearman"] == pytest.approx(0.8)  # same ranks as test_spearman
    with pytest.raises(ValueError):
        compute_metrics(task, np.zeros((4, 2)), labels)
