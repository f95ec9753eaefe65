"""Metrics on a hand-made accuracy matrix, against hand-computed values."""
import math

import numpy as np
import pytest

from rep_tune.runtime import metrics

NAN = float("nan")
# after task 0: 0.9 ; after task 1: 0.6, 0.8 ; after task 2: 0.5, 0.7, 0.9
A = np.array([[0.9, NAN, NAN],
              [0.6, 0.8, NAN],
              [0.5, 0.7, 0.9]])


def test_final_accuracy_is_mean_of_last_row():
    assert metrics.final_accuracy(A) == pytest.approx((0.5 + 0.7 + 0.9) / 3)   # 0.7


def test_average_incremental_accuracy():
    # rows: 0.9, (0.6+0.8)/2 = 0.7, 0.7 -> (0.9+0.7+0.7)/3
    assert metrics.average_incremental_accuracy(A) == pytest.approx(2.3 / 3)


def test_forgetting_uses_best_before_last_task():
    # task 0: max(0.9, 0.6) - 0.5 = 0.4 ; task 1: 0.8 - 0.7 = 0.1 -> 0.25
    assert metrics.forgetting(A) == pytest.approx(0.25)


def test_forgetting_takes_the_best_evaluation_not_the_first():
    """A matrix on which the definitions differ: task 0 improves after task 1 (backward transfer) and
    then drops. Best-minus-final (L2P's evaluate_till_now): 0.9 - 0.5; first-minus-final would give
    0.6 - 0.5; a best over earlier rows only, 0.9 - 0.5 too but 0.0 on task 1 (0.7 -> 0.8 improves)."""
    B = np.array([[0.6, NAN, NAN],
                  [0.9, 0.7, NAN],
                  [0.5, 0.8, 0.9]])
    assert metrics.forgetting(B) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.8)) / 2)      # 0.2, never negative
    assert metrics.forgetting(B) != pytest.approx(((0.6 - 0.5) + (0.7 - 0.8)) / 2)      # first-based: 0.0


def test_single_task_and_summary():
    assert metrics.forgetting([[0.42]]) == 0.0
    s = metrics.summarize(A)
    assert s["final_acc"] == pytest.approx(0.7) and s["forgetting"] == pytest.approx(0.25)
    assert not math.isnan(s["avg_incremental_acc"])


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        metrics.final_accuracy(np.zeros((2, 3)))
