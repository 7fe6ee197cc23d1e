"""The data contract of an incoming dataset, loaded from one YAML file a user can edit.

The contract names the columns we expect, how to find them in a source (renames), their types,
units and plausible ranges, and the policies for what does not fit. It is validated on load so a
typo in the contract fails loudly instead of letting bad data through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

TYPES = {"double": "DOUBLE", "bigint": "BIGINT", "boolean": "BOOLEAN", "varchar": "VARCHAR"}
TIMESTAMP_FORMATS = {"auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us"}
EXTRA_POLICIES = {"report", "reject"}
RANGE_POLICIES = {"keep", "null", "reject_row"}


class ContractError(ValueError):
    """The contract file itself is invalid."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "double"
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    required: bool = True
    description: str = ""

    @property
    def sql_type(self) -> str:
        return TYPES[self.type]


@dataclass(frozen=True)
class Contract:
    name: str
    columns: tuple[Column, ...]
    # Every layer downstream addresses these two by name; sources map onto them with `renames`.
    timestamp_column: ClassVar[str] = "timestamp"
    key_column: ClassVar[str] = "sensor_id"
    timestamp_format: str = "auto"
    timezone: str = "UTC"
    future_tolerance_minutes: float = 60.0
    delimiter: str = ","
    header: bool = True
    renames: dict[str, str] = field(default_factory=dict)
    extra_columns: str = "report"
    out_of_range: str = "keep"
    source: str = "<inline>"

    @property
    def column_names(self) -> list[str]:
        """Columns of the typed output, in order."""
        return [self.timestamp_column, self.key_column, *(c.name for c in self.columns)]

    def target_name(self, source_name: str) -> str:
        return self.renames.get(source_name, source_name)


def _require(condition: bool, message: str, source: str) -> None:
    if not condition:
        raise ContractError(f"{source}: {message}")


def parse_contract(data: dict[str, Any], source: str = "<inline>") -> Contract:
    _require(isinstance(data, dict), "a contract is a YAML mapping", source)
    known = {
        "name",
        "csv",
        "renames",
        "timestamp",
        "key",
        "extra_columns",
        "out_of_range",
        "columns",
    }
    unknown = set(data) - known
    _require(not unknown, f"unknown keys {sorted(unknown)} (known: {sorted(known)})", source)
    columns = []
    for name, spec in (data.get("columns") or {}).items():
        spec = dict(spec or {})
        bad = set(spec) - {"type", "unit", "min", "max", "required", "description"}
        _require(not bad, f"column {name!r}: unknown keys {sorted(bad)}", source)
        for bound in ("min", "max"):
            if spec.get(bound) is not None:
                try:
                    spec[bound] = float(spec[bound])  # YAML reads 1e3 as a string
                except (TypeError, ValueError):
                    raise ContractError(
                        f"{source}: column {name!r}: {bound} must be a number"
                    ) from None
        column = Column(name=str(name), **spec)
        _require(
            column.type in TYPES, f"column {name!r}: type must be one of {sorted(TYPES)}", source
        )
        if column.min is not None and column.max is not None:
            _require(column.min <= column.max, f"column {name!r}: min > max", source)
        columns.append(column)
    _require(bool(columns), "declares no columns", source)
    ts = data.get("timestamp") or {}
    bad_ts = set(ts) - {"format", "timezone", "future_tolerance_minutes"}
    _require(not bad_ts, f"timestamp: unknown keys {sorted(bad_ts)}", source)
    csv = data.get("csv") or {}
    renames = {str(k): str(v) for k, v in (data.get("renames") or {}).items()}
    contract = Contract(
        name=str(data.get("name", Path(source).stem)),
        columns=tuple(columns),
        timestamp_format=str(ts.get("format", "auto")),
        timezone=str(ts.get("timezone", "UTC")),
        future_tolerance_minutes=float(ts.get("future_tolerance_minutes", 60)),
        delimiter=str(csv.get("delimiter", ",")),
        header=bool(csv.get("header", True)),
        renames=renames,
        extra_columns=str(data.get("extra_columns", "report")),
        out_of_range=str(data.get("out_of_range", "keep")),
        source=source,
    )
    fmt = contract.timestamp_format
    _require(
        fmt in TIMESTAMP_FORMATS or "%" in fmt,
        f"timestamp.format must be one of {sorted(TIMESTAMP_FORMATS)} or a strptime pattern",
        source,
    )
    _require(len(contract.delimiter) == 1, "csv.delimiter must be one character", source)
    _require(contract.extra_columns in EXTRA_POLICIES, f"extra_columns: {EXTRA_POLICIES}", source)
    _require(contract.out_of_range in RANGE_POLICIES, f"out_of_range: {RANGE_POLICIES}", source)
    names = contract.column_names
    _require(len(names) == len(set(names)), f"duplicate column names in {names}", source)
    return contract


def load_contract(path: str | Path | None = None, *, default: str = "readings") -> Contract:
    """Load a contract file, or the bundled ``contracts/<default>.yaml`` when ``path`` is empty."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise ContractError(f"contract file not found: {path}")
        return parse_contract(yaml.safe_load(path.read_text()), source=str(path))
    bundled = resources.files("ml_platform") / "contracts" / f"{default}.yaml"
    return parse_contract(yaml.safe_load(bundled.read_text()), source=f"bundled {default}.yaml")
