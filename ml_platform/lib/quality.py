"""Great Expectations 1.x suites on a pandas DataFrame: one ephemeral context per call.

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


def run_suite(df: Any, expectations: list[Expect], name: str) -> SuiteOutcome:
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
    result = batch.validate(suite, result_format="SUMMARY")
    failed = []
    for r in result.results:
        if r.success:
            continue
        details = r.result or {}
        failed.append(
            {
                "expectation": r.expectation_config.type,
                "column": r.expectation_config.kwargs.get("column"),
                "columns": r.expectation_config.kwargs.get("column_list"),
                "unexpected_count": details.get("unexpected_count"),
                "observed_value": _plain(details.get("observed_value")),
                "sample": [
                    _plain(v) for v in (details.get("partial_unexpected_list") or [])[:SAMPLE]
                ],
            }
        )
    return SuiteOutcome(
        success=bool(result.success),
        evaluated=int(result.statistics["evaluated_expectations"]),
        failed=failed,
    )


def _plain(value: Any) -> Any:
    """JSON-friendly values for Dagster metadata."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
