"""Official GLUE metrics, computed with scikit-learn and scipy (evaluate's metric
scripts live on the hub and do not load offline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(y, p))


def _f1(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(y, p))


def _mcc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(y, p))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import pearsonr
    return float(pearsonr(p, y)[0])


def _spearman(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(p, y)[0])


METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _mcc,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def classification_metrics(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    return {name: METRIC_FUNCTIONS[name](p, y) for name in names}
