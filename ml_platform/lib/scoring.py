"""Scoring requests: a CSV of sensor ids and dates someone uploads to ``landing/scoring/``.

Pure pandas; the ``scored_files`` asset reads the file, validates it here and quarantines it with
the reason when it is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

MAX_ROWS = 100_000
_ALIASES = {"sensor": "sensor_id", "device_id": "sensor_id", "day": "date", "timestamp": "date"}


@dataclass
class MalformedRequestError(ValueError):
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def read_request(path: Path) -> pd.DataFrame:
    """``sensor_id`` (text) and ``date`` (a UTC day) per row, duplicates dropped, order kept."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=MAX_ROWS + 1)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MalformedRequestError("unreadable_csv", str(exc).strip()[:300]) from exc
    frame = frame.rename(columns=lambda c: _ALIASES.get(c.strip().lower(), c.strip().lower()))
    missing = [c for c in ("sensor_id", "date") if c not in frame.columns]
    if missing:
        raise MalformedRequestError(
            "missing_column",
            f"needs columns sensor_id and date; missing {missing}, found {list(frame.columns)}",
        )
    if frame.empty:
        raise MalformedRequestError("no_rows", "the request has a header but no rows")
    if len(frame) > MAX_ROWS:
        raise MalformedRequestError("too_many_rows", f"more than {MAX_ROWS:,} rows")
    frame["sensor_id"] = frame["sensor_id"].str.strip()
    dates = pd.to_datetime(frame["date"].str.strip(), errors="coerce", utc=True, format="mixed")
    bad = frame.loc[dates.isna() | (frame["sensor_id"] == ""), ["sensor_id", "date"]]
    if len(bad):
        raise MalformedRequestError(
            "bad_values",
            f"{len(bad)} row(s) without a sensor id or a readable date, first: "
            f"{bad.head(3).to_dict('records')}",
        )
    frame["date"] = dates.dt.strftime("%Y-%m-%d")
    return frame[["sensor_id", "date"]].drop_duplicates(ignore_index=True)
