"""Continual-learning metrics from an accuracy matrix.

``acc[i, j]`` = accuracy on task j's test set after training task i (NaN for j > i).
"""
from __future__ import annotations

import numpy as np


def _matrix(acc) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix: expected a square n_tasks x n_tasks array, found shape {a.shape}")
    return a


def final_accuracy(acc) -> float:
    """Mean accuracy over all tasks after the last task (mean of the last row)."""
    a = _matrix(acc)
    return float(np.mean(a[-1]))


def average_incremental_accuracy(acc) -> float:
    """Mean over i of the mean of row i over the tasks seen so far (columns 0..i)."""
    a = _matrix(acc)
    return float(np.mean([np.mean(a[i, :i + 1]) for i in range(a.shape[0])]))


def forgetting(acc) -> float:
    """Mean over tasks j < T-1 of (best accuracy on j over every evaluation) - (final accuracy on j).

    As L2P/DualPrompt's ``evaluate_till_now``: the best is taken over all rows, the final one
    included, so forgetting is never negative (a task that improves later has forgotten nothing).
    0.0 for a single task.
    """
    a = _matrix(acc)
    T = a.shape[0]
    if T == 1:
        return 0.0
    if np.isnan(a[T - 1, :T]).any():
        return float("nan")                  # the last row was not evaluated (train(eval_every_task=False))
    drops = [np.nanmax(a[j:T, j]) - a[T - 1, j] for j in range(T - 1)]
    return float(np.mean(drops))


def summarize(acc) -> dict[str, float]:
    """The three numbers a run reports, by name."""
    return {"final_acc": final_accuracy(acc), "avg_incremental_acc": average_incremental_accuracy(acc),
            "forgetting": forgetting(acc)}
