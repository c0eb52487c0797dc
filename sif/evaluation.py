"""Evaluation as plain functions: rating errors, and helpers for comparing models over folds or seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["rmse", "mae", "mean_std", "paired_t_test", "format_mean_std"]


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _pair(pred, target, name: str) -> tuple[Tensor, Tensor]:
    """Predictions and targets as float64 tensors of one non-empty shape (an empty pair has no error: NaN)."""
    p, t = _as_tensor(pred).double(), _as_tensor(target).double()
    if p.shape != t.shape:
        raise ValueError(f"{name}: prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    if p.numel() == 0:
        raise ValueError(f"{name}: no ratings to score (empty predictions and targets)")
    return p, t


def rmse(pred, target) -> float:
    """Root mean squared error."""
    p, t = _pair(pred, target, "rmse")
    return float(torch.sqrt(torch.mean((p - t) ** 2)))


def mae(pred, target) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, target, "mae")
    return float(torch.mean(torch.abs(p - t)))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("mean_std: no values")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test (e.g. two models' RMSE on the same folds)."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_t_test needs two equal-length samples of size >= 2, got {len(a)} and {len(b)}")
    return float(stats.ttest_rel(np.asarray(a), np.asarray(b)).pvalue)
