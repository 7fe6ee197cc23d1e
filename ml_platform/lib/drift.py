"""Feature drift between a reference window (the champion's training set) and current days.

scipy and scikit-learn, no Dagster. Per feature: the population stability index over the
reference's deciles and the two-sample Kolmogorov-Smirnov test; overall: adversarial validation,
a classifier asked to tell current rows from reference rows (ROC AUC 0.5 = indistinguishable).
A feature counts as drifting only when the shift is both large (PSI) and significant (KS p-value),
so a small current window does not raise alarms from sampling noise alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used: the code location imports Thresholds
    import pandas as pd

EPSILON = 1e-4  # floor on bin shares, so an empty bin does not make PSI infinite


@dataclass(frozen=True)
class Thresholds:
    """A feature drifts when its shift is large on both scales (PSI and the KS distance) and
    significant (KS p-value). Slow, real trends of sensors move KS by ~0.2 over weeks; a broken
    or re-calibrated measurement moves it past 0.5."""

    psi_warn: float = 0.1
    psi_fail: float = 0.25
    ks_warn: float = 0.3
    ks_fail: float = 0.5
    p_value: float = 0.001
    auc_warn: float = 0.85
    auc_fail: float = 0.95


@dataclass
class DriftReport:
    features: pd.DataFrame  # feature, psi, ks_statistic, ks_p_value, drifting; ranked
    adversarial_auc: float
    level: str  # "ok" | "warn" | "fail"
    reasons: list[str] = field(default_factory=list)

    def ranked(self, n: int = 10) -> list[dict]:
        return self.features.head(n).round(6).to_dict("records")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``'s quantile bins."""
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(reference) == 0 or len(current) == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: any change is a full shift
        return 0.0 if np.allclose(current, edges[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(current, edges)[0] / len(current)
    expected, actual = np.clip(expected, EPSILON, None), np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def adversarial_auc(reference: pd.DataFrame, current: pd.DataFrame, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a classifier separating current rows from reference rows."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    sample = reference.sample(min(len(reference), 5 * len(current), 3000), random_state=seed)
    x = pd.concat([sample, current], ignore_index=True).astype("float64")
    y = np.r_[np.zeros(len(sample)), np.ones(len(current))]
    folds = min(3, int(min(len(sample), len(current))))
    if folds < 2:
        return 0.5
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=8, random_state=seed)
    scores = cross_val_score(
        model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), scoring="roc_auc"
    )
    return float(np.mean(scores))


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    thresholds: Thresholds = Thresholds(),
    seed: int = 0,
) -> DriftReport:
    import pandas as pd
    from scipy.stats import ks_2samp

    rows = []
    for name in features:
        ref = reference[name].to_numpy(dtype="float64")
        cur = current[name].to_numpy(dtype="float64")
        ref_ok, cur_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
        if len(ref_ok) and len(cur_ok):
            test = ks_2samp(ref_ok, cur_ok)
            statistic, p_value = float(test.statistic), float(test.pvalue)
        else:
            statistic, p_value = 0.0, 1.0
        rows.append(
            {
                "feature": name,
                "psi": psi(ref, cur),
                "ks_statistic": statistic,
                "ks_p_value": p_value,
            }
        )
    table = pd.DataFrame(rows)
    significant = table["ks_p_value"] < thresholds.p_value
    table["drifting"] = (
        significant
        & (table["psi"] > thresholds.psi_warn)
        & (table["ks_statistic"] > thresholds.ks_warn)
    )
    failing = table[
        significant
        & (table["psi"] > thresholds.psi_fail)
        & (table["ks_statistic"] > thresholds.ks_fail)
    ]
    table = table.sort_values(["drifting", "ks_statistic", "psi"], ascending=False)
    table = table.reset_index(drop=True)
    auc = adversarial_auc(reference[features], current[features], seed)
    reasons = [
        f"{r.feature}: PSI {r.psi:.2f} > {thresholds.psi_fail}, KS {r.ks_statistic:.2f} > "
        f"{thresholds.ks_fail}"
        for r in failing.itertuples()
    ][:5]
    if auc > thresholds.auc_fail:
        reasons.append(f"adversarial AUC {auc:.2f} > {thresholds.auc_fail}")
    if reasons:
        level = "fail"
    elif table["drifting"].any() or auc > thresholds.auc_warn:
        level = "warn"
        top = table.iloc[0]
        reasons.append(
            f"top {top['feature']}: PSI {top['psi']:.2f}, KS {top['ks_statistic']:.2f}; "
            f"adversarial AUC {auc:.2f}"
        )
    else:
        level = "ok"
    return DriftReport(table, auc, level, reasons)
