"""Dagster metadata of the platform's assets in Dagster's own types: tables the UI renders with
a schema, object addresses the UI links, row counts it charts."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import dagster as dg

#: Dagster's table-column types of the Python values the platform's rows hold.
_COLUMN_TYPES = ((bool, "bool"), (Integral, "int"), (Real, "float"))


def table(
    rows: Sequence[Mapping[str, Any]], columns: int | Sequence[str] | None = None
) -> dg.TableMetadataValue:
    """``rows`` as a Dagster table, with a schema typed from the values; what is not a number or
    a flag is shown as text. Its columns: those named in ``columns`` (an empty table keeps its
    header; a column without values is text), else the first ``columns`` keys of the first row."""
    if columns is not None and not isinstance(columns, int):
        names = list(columns)
    else:
        names = list(rows[0])[:columns] if rows else []
    records = [dg.TableRecord({n: _cell(row.get(n)) for n in names}) for row in rows]
    schema = dg.TableSchema(columns=[dg.TableColumn(n, _column_type(rows, n)) for n in names])
    return dg.MetadataValue.table(records=records, schema=schema)


def _column_type(rows: Sequence[Mapping[str, Any]], name: str) -> str:
    values = [_cell(row.get(name)) for row in rows]
    present = [v for v in values if v is not None]
    for kind, label in _COLUMN_TYPES:
        if present and all(isinstance(v, kind) for v in present):
            return label
    return "string"


def _cell(value: Any) -> str | int | float | bool | None:
    """A value a TableRecord holds: numbers and flags as themselves (numpy's too), missing values
    as empty, dates and everything else as text."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # a numpy scalar
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def object_uri(store, key: str) -> dict[str, dg.MetadataValue]:
    """``dagster/uri`` of the main object (or zone prefix) the asset wrote: its ``s3://`` or
    ``file://`` address. One per asset; other objects are :func:`object_path` entries."""
    return {"dagster/uri": dg.MetadataValue.text(store.uri(key))}


def object_path(store, key: str) -> dg.PathMetadataValue:
    """The address of another object the asset wrote or read, as a Dagster path."""
    return dg.MetadataValue.path(store.uri(key))


def row_counts(rows_by_partition: Mapping[str, int]) -> dict[str, int]:
    """``dagster/row_count`` of the rows the run wrote and, when it ran one partition,
    ``dagster/partition_row_count`` (a range run's metadata is copied to each of its partitions,
    so a range gives no per-partition count)."""
    total = int(sum(rows_by_partition.values()))
    counts = {"dagster/row_count": total}
    if len(rows_by_partition) == 1:
        counts["dagster/partition_row_count"] = total
    return counts
