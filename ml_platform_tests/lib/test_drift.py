"""Drift statistics on synthetic data: a planted shift is found and ranked first, noise is not."""

import numpy as np
import pandas as pd
import pytest

from ml_platform.lib import drift

FEATURES = [f"f{i}" for i in range(8)]


def frame(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {name: rng.normal(10 + i, 1 + i / 4, n) for i, name in enumerate(FEATURES)}
    for name, by in (shift or {}).items():
        data[name] = data[name] + by
    return pd.DataFrame(data)


def test_a_planted_shift_in_one_feature_is_detected_and_ranked_first():
    report = drift.compare(frame(3000, 1), frame(150, 2, {"f3": 2.5}), FEATURES)
    assert report.level == "fail"
    assert report.features["feature"].iloc[0] == "f3"
    assert report.features.set_index("feature")["drifting"].to_dict() == {
        name: name == "f3" for name in FEATURES
    }
    assert report.adversarial_auc > 0.75


def test_the_same_distribution_raises_nothing():
    report = drift.compare(frame(3000, 1), frame(150, 3), FEATURES)
    assert report.level == "ok", report.reasons
    assert not report.features["drifting"].any()
    assert report.adversarial_auc < 0.7


@pytest.mark.parametrize(("shift", "at_least"), [(0.0, 0.0), (0.5, 0.05), (3.0, 1.0)])
def test_psi_grows_with_the_shift(shift, at_least):
    rng = np.random.default_rng(0)
    reference, current = rng.normal(0, 1, 20000), rng.normal(shift, 1, 20000)
    value = drift.psi(reference, current)
    assert value >= at_least
    if shift == 0:
        assert value < 0.01  # the same distribution is stable


def test_missing_values_and_constant_references_are_handled():
    assert drift.psi(np.array([np.nan, np.nan]), np.array([1.0])) == 0.0
    assert drift.psi(np.ones(10), np.ones(5)) == 0.0
    assert drift.psi(np.ones(10), np.full(5, 2.0)) == float("inf")
