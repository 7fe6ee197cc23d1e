"""Great Expectations 1.x suites on a pandas DataFrame: one ephemeral context per call, and one
validation per call, also for a range of partitions (:func:`run_suite_by_partition`).

GX takes 10+ s to import, so it is imported here, inside the function, never at module top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAMPLE = 5


@dataclass(frozen=True)
class Expect:
    """One expectation by its GX class name (e.g. ``ExpectColumnValuesToNotBeNull``) and kwargs."""

    type: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteOutcome:
    success: bool
    evaluated: int
    failed: list[dict[str, Any]]

    @property
    def summary(self) -> str:
        if self.success:
            return f"all {self.evaluated} expectations met"
        return "; ".join(
            f"{f['expectation']}({f.get('column') or f.get('columns') or ''}): "
            f"{f.get('unexpected_count', 'failed')} unexpected"
            for f in self.failed
        )


def _validate(df: Any, expectations: list[Expect], name: str, result_format: Any) -> Any:
    """One ephemeral GX context, one batch over ``df``, one validation of the whole suite."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(name=f"{name}_source")
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for e in expectations:
        suite.add_expectation(getattr(gxe, e.type)(**e.kwargs))
    return batch.validate(suite, result_format=result_format)


def _failure(r: Any, unexpected_count: Any, sample: list[Any]) -> dict[str, Any]:
    details = r.result or {}
    return {
        "expectation": r.expectation_config.type,
        "column": r.expectation_config.kwargs.get("column"),
        "columns": r.expectation_config.kwargs.get("column_list"),
        "unexpected_count": unexpected_count,
        "observed_value": _plain(details.get("observed_value")),
        "sample": [_plain(v) for v in sample[:SAMPLE]],
    }


def run_suite(df: Any, expectations: list[Expect], name: str) -> SuiteOutcome:
    result = _validate(df, expectations, name, "SUMMARY")
    failed = [
        _failure(
            r,
            (r.result or {}).get("unexpected_count"),
            (r.result or {}).get("partial_unexpected_list") or [],
        )
        for r in result.results
        if not r.success
    ]
    return SuiteOutcome(
        success=bool(result.success),
        evaluated=int(result.statistics["evaluated_expectations"]),
        failed=failed,
    )


def run_suite_by_partition(
    df: Any, expectations: list[Expect], name: str, partition_column: str
) -> dict[str, SuiteOutcome]:
    """Validate every partition of ``df`` in one pass: one context, one batch, one validation.

    ``expectations`` must be row-level (column map, pair map or compound-column expectations),
    so that each unexpected row names its partition (``partition_column``) and the outcome of
    each partition is read from the unexpected rows. A per-partition count is expressed as a
    pair of columns (e.g. rows of the partition vs. rows expected) compared row by row.
    """
    partitions = sorted(df[partition_column].unique()) if len(df) else []
    result = _validate(
        df,
        expectations,
        name,
        {
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [partition_column],
            "return_unexpected_index_query": False,
        },
    )
    failed: dict[str, list[dict[str, Any]]] = {p: [] for p in partitions}
    for r in result.results:
        if r.success:
            continue
        rows = (r.result or {}).get("unexpected_index_list")
        if rows is None:  # the expectation raised: every partition fails with its message
            message = _exception_message(r.exception_info)
            for p in partitions:
                failed[p].append({**_failure(r, None, []), "error": message})
            continue
        by_partition: dict[str, list[Any]] = {}
        for row in rows:
            by_partition.setdefault(row[partition_column], []).append(row)
        for p, unexpected in by_partition.items():
            sample = [{k: v for k, v in u.items() if k != partition_column} for u in unexpected]
            failed[p].append(_failure(r, len(unexpected), sample))
    evaluated = int(result.statistics["evaluated_expectations"])
    return {
        p: SuiteOutcome(success=not failed[p], evaluated=evaluated, failed=failed[p])
        for p in partitions
    }


def _exception_message(info: Any) -> str:
    """The message of a raised expectation (GX nests it under the failing metric's id)."""
    if isinstance(info, dict):
        if "exception_message" in info:
            return str(info["exception_message"])
        for nested in info.values():
            if isinstance(nested, dict) and "exception_message" in nested:
                return str(nested["exception_message"])
    return str(info)[:300]


def _plain(value: Any) -> Any:
    """JSON-friendly values for Dagster metadata."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
