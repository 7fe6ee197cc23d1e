"""Comparisons behind ``ml-platform reproduce``: recorded against rebuilt, and the report.

Pure pandas, no Dagster and no MLflow: ``ml_platform/reproduce.py`` gathers what a model version
recorded and what a rebuild gives now, and these functions say where the two differ.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Metrics within this absolute difference count as identical.
TOLERANCE = 1e-6
#: How many examples of a difference a report lists.
_EXAMPLES = 10


def compare_versions(recorded: Mapping[str, str], now: Mapping[str, str]) -> dict[str, list]:
    """Data versions of input partitions, recorded against now: which partitions ``changed``
    version, which are ``missing`` now, and which were ``added`` since."""
    return {
        "changed": [
            {"partition": p, "recorded": recorded[p], "now": now[p]}
            for p in sorted(recorded)
            if p in now and now[p] != recorded[p]
        ],
        "missing": sorted(p for p in recorded if p not in now),
        "added": sorted(p for p in now if p not in recorded),
    }


def frame_digest(frame: pd.DataFrame) -> str:
    """A hash of a frame's column names, dtypes and values (row order included, index not)."""
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}:{dtype};".encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _differs(left: pd.Series, right: pd.Series) -> np.ndarray:
    """Cell by cell: the values are not equal and not both missing."""
    a, b = left.to_numpy(dtype=object), right.to_numpy(dtype=object)
    missing_a, missing_b = pd.isna(a), pd.isna(b)
    differs = missing_a != missing_b
    present = ~(missing_a | missing_b)
    differs[present] = np.asarray(a[present] != b[present], dtype=bool)
    return differs


def compare_frames(
    stored: pd.DataFrame,
    rebuilt: pd.DataFrame,
    keys: Sequence[str] = ("sensor_id", "day"),
    ignore: Sequence[str] = ("label_id",),
) -> dict[str, Any]:
    """Where ``rebuilt`` differs from ``stored``: rows only in one (by ``keys``), columns only in
    one, and the cells that differ per column and per day. ``ignore`` columns (row numbers) are
    left out of the cell comparison, not of the digests."""
    keys = list(keys)
    report: dict[str, Any] = {
        "rows": {"stored": len(stored), "rebuilt": len(rebuilt)},
        "digest": {"stored": frame_digest(stored), "rebuilt": frame_digest(rebuilt)},
    }
    report["identical"] = report["digest"]["stored"] == report["digest"]["rebuilt"]
    report["columns_only_stored"] = [c for c in stored.columns if c not in rebuilt.columns]
    report["columns_only_rebuilt"] = [c for c in rebuilt.columns if c not in stored.columns]
    if report["identical"] or not set(keys) <= set(stored.columns) & set(rebuilt.columns):
        report.update(rows_only_stored=[], rows_only_rebuilt=[], cells_differ={}, days_differ={})
        return report

    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        for key in keys:
            out[key] = out[key].astype(str)
        return out.drop_duplicates(keys).set_index(keys)

    left, right = keyed(stored), keyed(rebuilt)
    only_left = left.index.difference(right.index)
    only_right = right.index.difference(left.index)
    common = left.index.intersection(right.index)
    columns = [c for c in left.columns if c in right.columns and c not in ignore]
    left, right = left.loc[common, columns], right.loc[common, columns]
    cells: dict[str, int] = {}
    row_differs = np.zeros(len(common), dtype=bool)
    for column in columns:
        differs = _differs(left[column], right[column])
        if differs.any():
            cells[column] = int(differs.sum())
            row_differs |= differs
    days: dict[str, int] = {}
    if "day" in keys:
        changed_days = common[row_differs].get_level_values("day")
        days = {
            str(d): int(n) for d, n in pd.Series(changed_days).value_counts().sort_index().items()
        }
    report.update(
        rows_only_stored=[list(k) for k in only_left[:_EXAMPLES]],
        rows_only_rebuilt=[list(k) for k in only_right[:_EXAMPLES]],
        rows_only_stored_count=len(only_left),
        rows_only_rebuilt_count=len(only_right),
        cells_differ=dict(sorted(cells.items(), key=lambda kv: -kv[1])),
        days_differ=days,
    )
    return report


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def compare_metrics(
    recorded: Mapping[str, float],
    reproduced: Mapping[str, float],
    tolerance: float = TOLERANCE,
) -> list[dict[str, Any]]:
    """One row per metric: recorded, reproduced, absolute difference and a status,
    ``identical`` (within ``tolerance``; two undefined values are identical too), ``differs``,
    ``not recorded`` or ``not reproduced``."""
    rows = []
    for name in [*reproduced, *(m for m in recorded if m not in reproduced)]:
        was, now = _number(recorded.get(name)), _number(reproduced.get(name))
        if was is None or now is None:
            status, diff = ("not recorded" if was is None else "not reproduced"), None
        elif math.isnan(was) or math.isnan(now):
            both = math.isnan(was) and math.isnan(now)
            status, diff = ("identical" if both else "differs"), (0.0 if both else None)
        else:
            diff = abs(was - now)
            status = "identical" if diff <= tolerance else "differs"
        rows.append(
            {"metric": name, "recorded": was, "reproduced": now, "abs_diff": diff, "status": status}
        )
    return rows


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _change(check: Mapping[str, Any]) -> str:
    return f"{_value(check['recorded'])} -> {_value(check['now'])}  " + (
        "same" if check["same"] else "CHANGED"
    )


def render(report: Mapping[str, Any]) -> str:
    """The report as text for a terminal: the verdict first, then every comparison."""
    lines = [
        f"{report['model']} version {report['version']} (week {report['week']}, "
        f"MLflow run {report['run_id']}): "
        + ("REPRODUCED" if report["reproduced"] else "NOT REPRODUCED"),
    ]
    if report["mismatches"]:
        lines.append("differences:")
        lines += [f"  - {m}" for m in report["mismatches"]]
    if report["warnings"]:
        lines.append("inputs that changed since (explanations, not failures unless --strict):")
        lines += [f"  - {w}" for w in report["warnings"]]
    checks = report["checks"]
    inputs: list[tuple[str, str]] = []
    for name, check in checks["code_versions"].items():
        inputs.append((f"code version {name}", _change(check)))
    inputs += [
        ("registry hash", _change(checks["registry_hash"])),
        ("offline store", _change(checks["offline_store"])),
    ]
    features = checks["features"]
    inputs.append(
        (
            "features",
            f"{features['recorded_count']} -> {features['now_count']}  "
            + ("same" if features["same"] else "CHANGED"),
        )
    )
    data = checks["data_versions"]
    if "skipped" in data:
        inputs.append(("data versions", f"not checked: {data['skipped']}"))
    for asset, diff in data.get("assets", {}).items():
        counts = ", ".join(f"{len(diff[k])} {k}" for k in ("changed", "missing", "added"))
        inputs.append((f"data versions {asset}", f"{diff['checked']} partitions: {counts}"))
    width = max(len(label) for label, _ in inputs)
    lines.append("inputs recorded in the manifest, against now:")
    lines += [f"  {label:<{width}}  {text}" for label, text in inputs]
    frames = report["training_set"]
    lines.append(
        f"training set: stored {frames['rows']['stored']} rows ({frames['digest']['stored']}), "
        f"rebuilt {frames['rows']['rebuilt']} rows ({frames['digest']['rebuilt']}): "
        + ("identical" if frames["identical"] else "DIFFERENT")
    )
    holdout = report["holdout"]
    lines.append(
        f"frozen holdout: {holdout['rows']} rows; the rebuilt set's split "
        + ("gives the same rows" if holdout["identical"] else "gives DIFFERENT rows")
    )
    params = report["params"]
    lines.append(
        "best parameters: "
        + ", ".join(f"{k}={v}" for k, v in params["reproduced"].items())
        + ("  (as recorded)" if params["same"] else f"  (recorded {params['recorded']})")
    )
    lines.append(f"metrics (tolerance {report['tolerance']:g}):")
    lines.append(f"  {'metric':<20} {'recorded':>12} {'reproduced':>12} {'abs diff':>12}  status")
    for row in report["metrics"]:
        lines.append(
            f"  {row['metric']:<20} {_value(row['recorded']):>12} {_value(row['reproduced']):>12} "
            f"{_value(row['abs_diff']):>12}  {row['status']}"
        )
    predictions = report["predictions"]
    if "error" in predictions:
        lines.append(f"registered model's predictions: not compared ({predictions['error']})")
    else:
        lines.append(
            "registered model's holdout probabilities against the retrained model's: max abs "
            f"diff {predictions['max_abs_diff']:.3g} "
            + ("(identical)" if predictions["identical"] else "(DIFFERENT)")
        )
    return "\n".join(lines)
