"""Training-set logic: sensor-day labels, join times and the point-in-time leakage guard.

Pure pandas, no Dagster and no Feast: the ``training_set`` asset feeds these functions with the
rows it reads from Feast's offline store and from the labels zone.

A training row is one sensor-day ``D``. Its *cut-off* is the end of ``D`` (the moment the day's
aggregates exist); its target is 1 when a failure event follows within ``horizon`` after the
cut-off. Features must come from rows whose event timestamp is at or before the cut-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import pandas as pd

from ml_platform.lib.lakehouse import end_of_day

TARGET = "failure_within_horizon"
KEYS = ["label_id", "sensor_id", "day", "cutoff"]


def utc(values: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC; PostgreSQL hands Feast results back tz-naive (in UTC)."""
    values = pd.to_datetime(values)
    return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")


def sensor_days(rows: pd.DataFrame, first_day: date, last_day: date) -> pd.DataFrame:
    """One entity row per sensor and day that has gold rows, ``first_day..last_day`` inclusive.

    ``rows`` has ``sensor_id`` and ``event_timestamp`` (the gold rows of the offline store).
    ``label_id`` numbers the rows so that they survive Feast's file store, which drops and
    reorders entity rows.
    """
    days = utc(rows["event_timestamp"]).dt.date
    picked = pd.DataFrame({"sensor_id": rows["sensor_id"].astype(str), "day": days})
    picked = picked[(picked["day"] >= first_day) & (picked["day"] <= last_day)]
    picked = picked.drop_duplicates().sort_values(["day", "sensor_id"], ignore_index=True)
    picked["cutoff"] = pd.to_datetime(
        [end_of_day(d.isoformat()) for d in picked["day"]], utc=True
    ).as_unit("us")
    picked.insert(0, "label_id", range(len(picked)))
    return picked[KEYS]


def failure_events(labels: pd.DataFrame, until: datetime | None = None) -> pd.DataFrame:
    """``sensor_id`` and ``timestamp`` (UTC) of the failures (``failure == 1``) in bronze label
    rows, before ``until`` when given."""
    if labels.empty:
        return pd.DataFrame({"sensor_id": [], "timestamp": pd.to_datetime([], utc=True)})
    events = labels.assign(timestamp=utc(labels["timestamp"]))
    keep = events["failure"] == 1
    if until is not None:
        keep &= events["timestamp"] < until
    return events.loc[keep, ["sensor_id", "timestamp"]].reset_index(drop=True)


def add_target(entities: pd.DataFrame, failures: pd.DataFrame, horizon: timedelta) -> pd.DataFrame:
    """``TARGET`` = 1 when a failure of the sensor happens in ``(cutoff, cutoff + horizon]``.

    ``failures`` has ``sensor_id`` and ``timestamp`` of failure events; also the time of the next
    failure (``next_failure``) for audits.
    """
    out = entities.sort_values("cutoff", kind="stable")
    events = pd.DataFrame(
        {
            "sensor_id": failures["sensor_id"].astype(str),
            "next_failure": utc(failures["timestamp"]).astype("datetime64[us, UTC]"),
        }
    ).sort_values("next_failure", kind="stable")
    out = pd.merge_asof(
        out,
        events,
        left_on="cutoff",
        right_on="next_failure",
        by="sensor_id",
        direction="forward",
        allow_exact_matches=False,  # a failure at the cut-off itself is already known
    )
    out[TARGET] = (out["next_failure"] <= out["cutoff"] + horizon).astype("int64")
    return out.sort_values("label_id", ignore_index=True)


def join_times(entities: pd.DataFrame) -> pd.Series:
    """The time each label asks Feast for features: its cut-off, never the label's event time."""
    return entities["cutoff"]


def find_leaks(
    training: pd.DataFrame,
    candidates: pd.DataFrame,
    features: Sequence[str],
    *,
    created_too: bool = False,
) -> pd.Series:
    """True for the training rows whose values of ``features`` came from the future.

    ``candidates`` are the offline store's rows (``sensor_id``, ``event_timestamp``,
    ``created_timestamp`` and the features). A row's feature vector is *known at its cut-off* when
    some row of the same sensor with exactly these values has an event timestamp (and, with
    ``created_too``, a created timestamp) at or before the cut-off. A vector no row at or before the
    cut-off explains is a leak; an all-missing vector used nothing and is not.
    """
    features = list(features)
    has_value = training[features].notna().any(axis=1)
    keys = ["sensor_id", *features]
    left = training.loc[has_value, ["label_id", "cutoff", *keys]].copy()
    right = candidates[[*keys, "event_timestamp", "created_timestamp"]].copy()
    for frame in (left, right):
        frame["sensor_id"] = frame["sensor_id"].astype(str)
        for name in features:  # ints with NaN come back as floats: compare as floats
            frame[name] = frame[name].astype("float64")
    right["event_timestamp"] = utc(right["event_timestamp"])
    right["created_timestamp"] = utc(right["created_timestamp"])
    matched = left.merge(right, on=keys, how="inner")  # NaN matches NaN in pandas merges
    known = matched["event_timestamp"] <= matched["cutoff"]
    if created_too:
        known &= matched["created_timestamp"] <= matched["cutoff"]
    explained = set(matched.loc[known, "label_id"])
    return has_value & ~training["label_id"].isin(explained)


def guard(
    training: pd.DataFrame,
    candidates: pd.DataFrame,
    views: dict[str, list[str]],
    *,
    created_too: bool = False,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Blank every view's values that came from the future; returns the counts blanked per view."""
    out = training.copy()
    removed = {}
    for view, features in views.items():
        leaks = find_leaks(out, candidates, features, created_too=created_too)
        out.loc[leaks, features] = None
        removed[view] = int(leaks.sum())
    return out, removed


def completeness(frame: pd.DataFrame, features: Sequence[str]) -> float:
    """Share of non-missing cells of ``features`` (1.0 for an empty frame)."""
    cells = frame[list(features)]
    return 1.0 if cells.size == 0 else float(cells.notna().to_numpy().mean())
