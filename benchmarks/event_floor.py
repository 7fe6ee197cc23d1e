"""Reference of ``make bench BENCH=backfill``: what Dagster itself spends per check evaluation.

A daily-partitioned asset that writes nothing and a check that yields one passing evaluation
per day and does nothing else, materialized over the same range, from a fresh process, on the
same instance storage as the lakehouse. The marginal milliseconds per day of its check step are
the floor under any check reported per partition: the event write of one evaluation.
"""

import dagster as dg

from ml_platform.defs.partitions import daily


@dg.asset(partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run())
def floor(context: dg.AssetExecutionContext) -> None:
    """Nothing: the materialization events only."""


@dg.asset_check(asset=floor, partitions_def=daily, blocking=True)
def floor_check(context: dg.AssetCheckExecutionContext):
    for day in context.partition_keys:
        yield dg.AssetCheckEvaluation(
            asset_key=floor.key, check_name="floor_check", passed=True, partition=day
        )
    yield dg.Output(None)


# In process, as the lakehouse runs (ml_platform/definitions.py): no step pays a process start.
defs = dg.Definitions(assets=[floor], asset_checks=[floor_check], executor=dg.in_process_executor)
