"""The failure classifier and the behaviour clusters: scikit-learn only, no Dagster, no MLflow.

Training is time-aware end to end: the holdout is the most recent slice of the training window,
and cross-validation folds are blocks of whole days, each validated only on days after the ones
it was trained on (never random rows across time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_platform.lib.training import KEYS, TARGET

#: Training-set columns that are not features.
NOT_FEATURES = {*KEYS, TARGET, "next_failure"}
#: Hyper-parameters that scikit-learn wants as integers (run config carries numbers as floats).
_INTEGER_PARAMS = {"max_iter", "max_leaf_nodes", "max_depth", "min_samples_leaf", "n_clusters"}


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NOT_FEATURES]


def split_holdout(
    frame: pd.DataFrame, holdout_days: int, gap_days: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, holdout)``: the holdout is the last ``holdout_days`` days of the window.

    The ``gap_days`` before the holdout are left out of both: their targets look ``horizon``
    days ahead, into the holdout's failures (an embargo against label leakage).
    """
    days = np.sort(frame["day"].unique())
    if len(days) <= holdout_days + gap_days:
        raise ValueError(
            f"the training window has {len(days)} days; a {holdout_days}-day holdout after a "
            f"{gap_days}-day gap needs more"
        )
    first_holdout_day = days[-holdout_days]
    recent = frame["day"] >= first_holdout_day
    train = frame["day"] < days[-holdout_days - gap_days]
    return frame[train].reset_index(drop=True), frame[recent].reset_index(drop=True)


def date_folds(
    days: pd.Series, n_splits: int, gap_days: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds over whole days: fold k trains on day blocks 0..k and validates
    on block k+1, so no fold ever validates on a day before one it trained on; the last
    ``gap_days`` days before each validation block are left out of its training days."""
    unique = np.sort(days.unique())
    if len(unique) < n_splits + 1:
        raise ValueError(f"{len(unique)} days cannot make {n_splits} time-ordered folds")
    blocks = np.array_split(unique, n_splits + 1)
    values = days.to_numpy()
    folds = []
    for k in range(n_splits):
        train_days = np.concatenate(blocks[: k + 1])
        if gap_days:
            train_days = train_days[train_days < blocks[k + 1][0] - np.timedelta64(gap_days, "D")]
        folds.append(
            (
                np.flatnonzero(np.isin(values, train_days)),
                np.flatnonzero(np.isin(values, blocks[k + 1])),
            )
        )
    return folds


def typed_params(space: Mapping[str, Sequence[float]]) -> dict[str, list[Any]]:
    return {
        name: [int(v) if name.split("__")[-1] in _INTEGER_PARAMS else v for v in values]
        for name, values in space.items()
    }


def classifier_pipeline(seed: int = 0):
    """Imputation (gaps are normal: a sensor's first week has no trailing features), scaling and
    gradient-boosted trees weighted for the rare positive class."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)),
        ]
    )


SCORING = {
    "f1": "f1",
    "precision": "precision",
    "recall": "recall",
    "roc_auc": "roc_auc",
    "pr_auc": "average_precision",
}


@dataclass
class SearchResult:
    model: Any  # the refitted best pipeline
    best_params: dict[str, Any]
    cv_metrics: dict[str, float]  # mean over folds of the best candidate
    candidates: int


def search(
    train: pd.DataFrame,
    features: list[str],
    *,
    space: Mapping[str, Sequence[float]],
    method: str = "randomized",
    n_iter: int = 6,
    cv_splits: int = 3,
    gap_days: int = 0,
    seed: int = 0,
) -> SearchResult:
    """Hyper-parameter search over date folds (with an embargo of ``gap_days``), refit on F1."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    folds = date_folds(train["day"], cv_splits, gap_days)
    params = typed_params(space)
    common = {"scoring": SCORING, "refit": "f1", "cv": folds, "n_jobs": 1, "error_score": "raise"}
    if method == "grid":
        searcher = GridSearchCV(classifier_pipeline(seed), params, **common)
    elif method == "randomized":
        searcher = RandomizedSearchCV(
            classifier_pipeline(seed), params, n_iter=n_iter, random_state=seed, **common
        )
    else:
        raise ValueError(f"search must be 'grid' or 'randomized', got {method!r}")
    searcher.fit(train[features], train[TARGET])
    best = searcher.best_index_
    cv = {f"cv_{name}": float(searcher.cv_results_[f"mean_test_{name}"][best]) for name in SCORING}
    return SearchResult(
        searcher.best_estimator_, searcher.best_params_, cv, len(searcher.cv_results_["params"])
    )


def baseline(train: pd.DataFrame, features: list[str], seed: int = 0):
    """What a model must beat: guesses drawn from the training class balance."""
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="stratified", random_state=seed).fit(
        train[features], train[TARGET]
    )


#: What :func:`evaluate` measures.
METRICS = ("f1", "precision", "recall", "accuracy", "roc_auc", "pr_auc")


def evaluate(model, frame: pd.DataFrame, features: list[str], threshold: float = 0.5) -> dict:
    """Holdout metrics of ``model``; probabilities of the positive class at ``threshold``."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = frame[TARGET].to_numpy()
    proba = model.predict_proba(frame[features])[:, 1]
    predicted = (proba >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y, predicted)),
        "roc_auc": float(roc_auc_score(y, proba)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, proba)) if both else float("nan"),
    }


def probabilities_are_valid(proba: np.ndarray) -> bool:
    proba = np.asarray(proba, dtype=float)
    return bool(np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all())


def confusion_counts(actual, proba, threshold: float) -> dict[str, int]:
    """The confusion matrix at the decision ``threshold``: true and false negatives and
    positives of rows whose failure probability is ``proba`` and true class ``actual``."""
    predicted = np.asarray(proba) >= threshold
    failed = np.asarray(actual).astype(bool)
    return {
        "tn": int((~predicted & ~failed).sum()),
        "fp": int((predicted & ~failed).sum()),
        "fn": int((~predicted & failed).sum()),
        "tp": int((predicted & failed).sum()),
    }


def plots(
    model,
    frame: pd.DataFrame,
    features: list[str],
    out: Path,
    seed: int = 0,
    *,
    confusion: dict[str, int],
) -> list[Path]:
    """The ``confusion`` matrix (:func:`confusion_counts`), ROC and precision-recall curves,
    permutation feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        PrecisionRecallDisplay,
        RocCurveDisplay,
    )

    out.mkdir(parents=True, exist_ok=True)
    x, y = frame[features], frame[TARGET]
    proba = model.predict_proba(x)[:, 1]  # once for both curves
    c = confusion
    written = []
    for name, draw in (
        ("confusion_matrix.png", lambda ax: ConfusionMatrixDisplay(
            np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]]), display_labels=[0, 1]
        ).plot(ax=ax)),
        ("roc_curve.png", lambda ax: RocCurveDisplay.from_predictions(y, proba, ax=ax)),
        ("precision_recall_curve.png",
         lambda ax: PrecisionRecallDisplay.from_predictions(y, proba, ax=ax)),
    ):  # fmt: skip
        figure, axes = plt.subplots(figsize=(5, 4))
        draw(axes)
        figure.tight_layout()
        figure.savefig(out / name, dpi=80)
        plt.close(figure)
        written.append(out / name)
    importance = permutation_importance(
        model, x, y, scoring="average_precision", n_repeats=3, random_state=seed, n_jobs=1
    )
    order = np.argsort(importance.importances_mean)[-15:]
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.barh([features[i] for i in order], importance.importances_mean[order])
    axes.set_xlabel("drop in average precision when shuffled")
    figure.tight_layout()
    figure.savefig(out / "feature_importance.png", dpi=80)
    plt.close(figure)
    written.append(out / "feature_importance.png")
    return written


# ------------------------------------------------------------------------------ clusters


def fit_clusters(
    frame: pd.DataFrame,
    features: list[str],
    n_clusters: int,
    *,
    warm_start: Any | None = None,
    seed: int = 0,
):
    """Scaled K-means over sensor-day behaviour. With ``warm_start`` (the previous pipeline), the
    scaler is refitted and K-means starts from the previous centres mapped into the new scale."""
    from sklearn.cluster import KMeans
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    prep = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    ).fit(frame[features])
    if warm_start is not None:
        previous = warm_start.named_steps
        centres_raw = previous["scale"].inverse_transform(previous["kmeans"].cluster_centers_)
        init: Any = prep.named_steps["scale"].transform(centres_raw)
        kmeans = KMeans(n_clusters=len(init), init=init, n_init=1, random_state=seed)
    else:
        init = None
        kmeans = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed)
    kmeans.fit(prep.transform(frame[features]))
    model = Pipeline([*prep.steps, ("kmeans", kmeans)])
    return model, init


def cluster_report(model, frame: pd.DataFrame, features: list[str], seed: int = 0) -> dict:
    from sklearn.metrics import silhouette_score

    transformed = model[:-1].transform(frame[features])
    labels = model.named_steps["kmeans"].predict(transformed)
    k = model.named_steps["kmeans"].n_clusters
    sizes = np.bincount(labels, minlength=k).tolist()
    sample = min(len(labels), 5000)
    silhouette = (
        float(silhouette_score(transformed, labels, sample_size=sample, random_state=seed))
        if len(set(labels)) > 1
        else float("nan")
    )
    return {"sizes": sizes, "silhouette": silhouette, "inertia": float(model[-1].inertia_)}
