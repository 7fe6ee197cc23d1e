"""Drift statistics: PSI, KS and the verdict checked against hand-worked examples and textbook
values; on synthetic data a planted shift is found and ranked first, noise is not."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from ml_platform.lib import drift

FEATURES = [f"f{i}" for i in range(8)]

#: The reference of the hand-worked examples: ten values whose deciles (linear interpolation at
#: position q * (n - 1)) are 0, 0.9, 1.8, ..., 8.1, 9. With the outer edges opened the ten bins
#: are (-inf, 0.9), [0.9, 1.8), ..., [7.2, 8.1), [8.1, inf), each holding one reference value:
#: every expected share is 0.1. The current values below all lie well inside a bin.
REFERENCE = np.arange(10.0)
FLOOR = 1e-4  # the documented floor on a bin's share, so that an empty bin is not infinite
#: 0.5 x4 -> bin 0; 2.0 -> bin 2 [1.8, 2.7); 5.0 x3 -> bin 5 [4.5, 5.4); 9.0 x2 -> bin 9; six
#: bins empty. Its PSI against REFERENCE, worked by hand below: 4.845434.
HAND_COUNTED = np.array([0.5, 0.5, 0.5, 0.5, 2.0, 5.0, 5.0, 5.0, 9.0, 9.0])
HAND_COUNTED_SHARES = [0.4, 0, 0.1, 0, 0, 0.3, 0, 0, 0, 0.2]
HAND_COUNTED_PSI = 4.845434  # rounded


def textbook_psi(actual: list[float], expected: list[float]) -> float:
    """sum((a - e) * ln(a / e)) over the bins, each share floored at FLOOR."""
    total = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = max(a, FLOOR), max(e, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def exact_ks_p_value(n: int, m: int, d: float) -> float:
    """Two-sided P(D >= d) for samples of n and m distinct values under the null, by counting
    the lattice paths from (0, 0) to (n, m) that keep |i/n - j/m| < d (Hodges, 1958)."""
    ways = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if abs(i / n - j / m) >= d - 1e-12:
                continue
            if i == j == 0:
                ways[i][j] = 1
            else:
                ways[i][j] = (ways[i - 1][j] if i else 0) + (ways[i][j - 1] if j else 0)
    return 1 - ways[n][m] / math.comb(n + m, n)


def frame(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {name: rng.normal(10 + i, 1 + i / 4, n) for i, name in enumerate(FEATURES)}
    for name, by in (shift or {}).items():
        data[name] = data[name] + by
    return pd.DataFrame(data)


def test_psi_of_hand_counted_examples():
    # HAND_COUNTED: empty shares floored to 1e-4.
    by_hand = textbook_psi(HAND_COUNTED_SHARES, [0.1] * 10)
    # 0.3 ln 4 + 0 + 0.2 ln 3 + 0.1 ln 2 + 6 x (1e-4 - 0.1) ln(1e-4 / 0.1)
    assert by_hand == pytest.approx(0.415888 + 0.219722 + 0.069315 + 6 * 0.690085, abs=1e-5)
    assert by_hand == pytest.approx(HAND_COUNTED_PSI, abs=1e-6)
    assert drift.psi(REFERENCE, HAND_COUNTED) == pytest.approx(by_hand, rel=1e-12)

    # No empty bin: four values in bin 0, two in each of bins 1-7, one in each of bins 8 and 9.
    # PSI = 0.1 ln 2 + 2 x (-0.05) ln 0.5 = 0.2 ln 2 = 0.1386: above the warning level, below
    # the failure level.
    current = np.array([0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.2, 4.8, 5.2,
                        5.6, 6.0, 6.5, 7.0, 7.6, 8.6])  # fmt: skip
    shares = [0.2] + [0.1] * 7 + [0.05, 0.05]
    assert textbook_psi(shares, [0.1] * 10) == pytest.approx(0.2 * math.log(2), rel=1e-12)
    value = drift.psi(REFERENCE, current)
    assert value == pytest.approx(0.2 * math.log(2), rel=1e-12)
    assert drift.Thresholds().psi_warn < value < drift.Thresholds().psi_fail

    # Missing values are dropped before the shares are taken.
    with_nan = np.r_[current, [np.nan] * 5]
    assert drift.psi(np.r_[REFERENCE, np.nan], with_nan) == pytest.approx(value, rel=1e-12)


def test_identical_distributions_give_zero_and_a_shift_exceeds_the_failure_threshold():
    assert drift.psi(REFERENCE, REFERENCE) == 0.0
    assert drift.psi(REFERENCE, np.tile(REFERENCE, 3)) == 0.0  # same shares, three times the rows
    # Shifted by 3.05: bins 0-2 empty, bins 3-8 one value each, 9.05..12.05 all in bin 9:
    # 3 x (1e-4 - 0.1) ln(1e-3) + 0.3 ln 4 = 2.4861.
    by_hand = textbook_psi([0, 0, 0] + [0.1] * 6 + [0.4], [0.1] * 10)
    assert by_hand == pytest.approx(3 * 0.690085 + 0.415888, abs=1e-5)
    shifted = drift.psi(REFERENCE, REFERENCE + 3.05)
    assert shifted == pytest.approx(by_hand, rel=1e-12)
    # The module's failure level is the usual rule of thumb: PSI above 0.25 is a major shift.
    assert drift.Thresholds().psi_fail == 0.25
    assert shifted > drift.Thresholds().psi_fail


def test_compare_reports_hand_worked_psi_and_ks_and_needs_significance_to_alarm():
    """Ten values against the same ten shifted by 3.05 (f), and against the first hand-counted
    sample (g): large PSIs, but with ten rows a side the KS test cannot call either significant,
    so nothing drifts."""
    current = pd.DataFrame({"f": REFERENCE + 3.05, "g": HAND_COUNTED})
    report = drift.compare(pd.DataFrame({"f": REFERENCE, "g": REFERENCE}), current, ["f", "g"])
    rows = report.features.set_index("feature").to_dict("index")
    # g is the binning's asymmetric case: its PSI is over the reference's deciles, not the
    # current's. KS: at 0.5 the reference ECDF is 0.1 and the current's 0.4, D = 0.3 at most.
    by_hand = textbook_psi(HAND_COUNTED_SHARES, [0.1] * 10)
    assert rows["g"]["psi"] == pytest.approx(by_hand, rel=1e-12)
    assert rows["g"]["ks_statistic"] == pytest.approx(0.3, abs=1e-12)
    assert rows["g"]["ks_p_value"] == pytest.approx(exact_ks_p_value(10, 10, 0.3), rel=1e-9)
    assert not rows["g"]["drifting"]
    # Ranked by (drifting, KS, PSI): f before g.
    assert list(report.features["feature"]) == ["f", "g"]
    row = rows["f"]
    assert row["psi"] == pytest.approx(textbook_psi([0, 0, 0] + [0.1] * 6 + [0.4], [0.1] * 10))
    # ECDFs: just below 3.05 the reference has 4 of 10 values (0-3) and the current none; at 9
    # the reference has all and the current 6 (3.05..8.05): D = 0.4 (never more).
    assert row["ks_statistic"] == pytest.approx(0.4, abs=1e-12)
    # Exact two-sided p-value for n = m = 10 and D = 4/10, by lattice paths: 0.4175.
    assert exact_ks_p_value(10, 10, 0.4) == pytest.approx(0.41752, abs=1e-5)
    assert row["ks_p_value"] == pytest.approx(exact_ks_p_value(10, 10, 0.4), rel=1e-9)
    assert bool(row["drifting"]) is False
    # 20 rows cannot be split by trees needing 20 rows a leaf: constant scores, AUC 0.5.
    assert report.adversarial_auc == 0.5
    assert (report.level, report.reasons) == ("ok", [])

    same = drift.compare(pd.DataFrame({"f": REFERENCE}), pd.DataFrame({"f": REFERENCE}), ["f"])
    [row] = same.features.to_dict("records")
    assert (row["psi"], row["ks_statistic"], row["ks_p_value"]) == (0.0, 0.0, 1.0)
    assert (same.level, same.reasons) == ("ok", [])


@pytest.mark.parametrize(
    ("shift", "shares", "ks", "level", "reason"),
    [
        # KS 0.6 > 0.5 and PSI > 0.25: a failure, named with both figures.
        (600, [0] * 6 + [0.1] * 3 + [0.7], 0.6, "fail", "f: PSI 5.31 > 0.25, KS 0.60 > 0.5"),
        # KS 0.4: drifting (above 0.3) but not failing (not above 0.5), whatever the PSI.
        (400, [0] * 4 + [0.1] * 5 + [0.5], 0.4, "warn", "top f: PSI 3.40, KS 0.40; "),
    ],
)
def test_compare_judges_a_large_significant_shift_with_hand_worked_values(
    shift, shares, ks, level, reason
):
    """0..999 against the same values shifted. The reference's deciles are 99.9 k, so each bin
    holds 100 values; the shifted values fill the upper bins with 100 each and the last with the
    rest (shift 600: bins 6-8 and 700 in bin 9; shift 400: bins 4-8 and 500 in bin 9)."""
    reference = pd.DataFrame({"f": np.arange(1000.0)})
    current = pd.DataFrame({"f": np.arange(1000.0) + shift})
    report = drift.compare(reference, current, ["f"])
    [row] = report.features.to_dict("records")
    by_hand = textbook_psi(shares, [0.1] * 10)
    if shift == 600:  # 6 x (1e-4 - 0.1) ln(1e-3) + 0.6 ln 7
        assert by_hand == pytest.approx(6 * 0.690085 + 0.6 * math.log(7), abs=1e-5)  # 5.3081
    else:  # 4 x (1e-4 - 0.1) ln(1e-3) + 0.4 ln 5
        assert by_hand == pytest.approx(4 * 0.690085 + 0.4 * math.log(5), abs=1e-5)  # 3.4041
    assert row["psi"] == pytest.approx(by_hand, rel=1e-12)
    # Below the shift the reference ECDF runs ahead by shift/1000; above, the gap stays there.
    assert row["ks_statistic"] == pytest.approx(ks, abs=1e-12)
    # Asymptotically p ~ 2 exp(-2 D^2 nm/(n+m)) <= 2 exp(-160): far below the 0.001 threshold.
    assert row["ks_p_value"] < 1e-50
    assert bool(row["drifting"]) is True
    assert report.level == level
    assert report.reasons[0].startswith(reason)


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


def _pandas_psi(reference: np.ndarray, current: np.ndarray) -> float:
    """The documented rule written with pandas: the reference's deciles as edges (outer ones
    opened), shares per bin, floored, then the textbook sum."""
    edges = pd.Series(reference).quantile([k / 10 for k in range(11)]).to_numpy()
    edges[0], edges[-1] = -np.inf, np.inf

    def shares(values: np.ndarray) -> np.ndarray:
        binned = pd.cut(pd.Series(values), edges, right=False)
        return binned.value_counts(normalize=True, sort=False).to_numpy()

    return textbook_psi(list(shares(current)), list(shares(reference)))


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_psi_of_normal_samples_matches_pandas_and_the_population_value(shift):
    rng = np.random.default_rng(0)
    reference, current = rng.normal(0, 1, 20000), rng.normal(shift, 1, 20000)
    value = drift.psi(reference, current)
    assert value == pytest.approx(_pandas_psi(reference, current), rel=1e-9)
    # Population PSI of N(shift, 1) over the deciles of N(0, 1): shares Phi(z_k+1 - s) -
    # Phi(z_k - s) against 0.1 each (0 at no shift, 0.2377 at 0.5 SD, 6.045 at 3 SD).
    z = norm.ppf(np.linspace(0, 1, 11))
    population = textbook_psi(list(np.diff(norm.cdf(z - shift))), [0.1] * 10)
    assert value == pytest.approx(population, abs=0.02, rel=0.01)
    if shift == 0:
        assert value < 0.01  # the same distribution is stable
    if shift == 3.0:
        assert value > drift.Thresholds().psi_fail


def test_missing_values_and_constant_references_are_handled():
    assert drift.psi(np.array([np.nan, np.nan]), np.array([1.0])) == 0.0
    assert drift.psi(np.ones(10), np.ones(5)) == 0.0
    assert drift.psi(np.ones(10), np.full(5, 2.0)) == float("inf")
