"""One week's failure classifier: split, search, baseline and holdout scores, and what its MLflow
run logs. Shared by the ``failure_model`` asset and ``ml-platform reproduce``.

No Dagster here, and nothing heavy at import time: the code location imports this module, so
pandas and scikit-learn (through :mod:`ml_platform.lib.modeling`) load only when a model trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml_platform.lib.modeling import SearchResult

#: The default search space (pipeline step "model" is a HistGradientBoostingClassifier).
DEFAULT_SPACE: dict[str, list[float]] = {
    "model__learning_rate": [0.05, 0.1],
    "model__max_leaf_nodes": [15, 31],
    "model__l2_regularization": [0.0, 1.0],
    "model__max_iter": [150],
}


class TrainingSettings(Protocol):
    """What a training run is configured with (the asset's ``FailureModelConfig`` is one)."""

    search: str
    n_iter: int
    cv_splits: int
    param_space: dict[str, list[float]]
    holdout_days: int
    threshold: float
    seed: int


@dataclass
class FittedFailureModel:
    """One week's classifier before it is judged: what :func:`fit_failure_model` returns."""

    features: list[str]
    train: pd.DataFrame
    holdout: pd.DataFrame  # the last holdout_days days of the set, never trained on
    gap_days: int
    search: SearchResult  # the refitted best pipeline and its cross-validation scores
    baseline: Any  # what the model must beat


def fit_failure_model(
    frame: pd.DataFrame, horizon_days: float, config: TrainingSettings
) -> FittedFailureModel:
    """Split, search and baseline of one week's training set, as ``failure_model`` trains it
    (and ``ml-platform reproduce`` retrains it): deterministic for a given ``config.seed``."""
    from ml_platform.lib import modeling

    # A day's target looks `horizon` days ahead: that many days before the holdout (and before
    # each validation fold) are left out of training, so no failure labels both sides.
    gap_days = math.ceil(horizon_days)
    features = modeling.feature_columns(frame)
    train, holdout = modeling.split_holdout(frame, config.holdout_days, gap_days)
    result = modeling.search(
        train,
        features,
        space=config.param_space,
        method=config.search,
        n_iter=config.n_iter,
        cv_splits=config.cv_splits,
        gap_days=gap_days,
        seed=config.seed,
    )
    dummy = modeling.baseline(train, features, config.seed)
    return FittedFailureModel(features, train, holdout, gap_days, result, dummy)


@dataclass
class HoldoutScores:
    """The model and its baseline judged on the frozen holdout."""

    scores: dict[str, float]  # the model's
    baseline: dict[str, float]
    proba: np.ndarray  # the model's failure probability of each holdout row
    valid: bool  # every probability is a number in [0, 1]


def score_on_holdout(fitted: FittedFailureModel, threshold: float) -> HoldoutScores:
    """The fitted model's and its baseline's scores on the holdout, at ``threshold``."""
    from ml_platform.lib import modeling

    model, holdout, features = fitted.search.model, fitted.holdout, fitted.features
    scores = modeling.evaluate(model, holdout, features, threshold)
    base = modeling.evaluate(fitted.baseline, holdout, features, threshold)
    proba = model.predict_proba(holdout[features])[:, 1]
    return HoldoutScores(scores, base, proba, modeling.probabilities_are_valid(proba))


def run_params(fitted: FittedFailureModel, config: TrainingSettings) -> dict[str, Any]:
    """The params a failure_model run logs: the best hyper-parameters (without the pipeline
    step's prefix), then what ``ml-platform reproduce`` needs to run the same search again."""
    result = fitted.search
    return {
        **{k.removeprefix("model__"): v for k, v in result.best_params.items()},
        "search": config.search,
        "candidates": result.candidates,
        "cv_splits": config.cv_splits,
        "holdout_days": config.holdout_days,
        "gap_days": fitted.gap_days,
        "threshold": config.threshold,
        "train_rows": len(fitted.train),
        "holdout_rows": len(fitted.holdout),
        "features": len(fitted.features),
        "seed": config.seed,
    }


def run_metrics(
    cv_metrics: dict[str, float],
    scores: dict[str, float],
    base: dict[str, float],
    confusion: dict[str, int],
) -> dict[str, float]:
    """The metrics a failure_model run logs (besides its timing): cross-validation, then the
    model's and the baseline's scores on the frozen holdout, and the model's confusion-matrix
    cells there (``modeling.confusion_counts``)."""
    return {
        **cv_metrics,
        **{f"holdout_{k}": v for k, v in scores.items()},
        **{f"baseline_{k}": v for k, v in base.items()},
        **{f"holdout_{cell}": float(n) for cell, n in confusion.items()},
    }
