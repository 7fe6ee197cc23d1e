"""Partitions shared across layers."""

import dagster as dg

from ml_platform.settings import settings

_start_date = settings().start_date

#: Raw assets: one partition per UTC landing day (the day an object version was written), so the
#: number of partitions grows with days, not files. Which versions each day holds, and what became
#: of each, is the ledger's (``lake/_ledger/``) and the runs' metadata.
landing_days = dg.DailyPartitionsDefinition(start_date=_start_date, end_offset=1)

#: One partition per scoring request dropped into ``landing/scoring/``:
#: ``<key below landing/scoring/>@<etag>``. Requests are rare and each is its own deliverable.
scoring_files = dg.DynamicPartitionsDefinition(name="scoring_files")

#: One partition per UTC day, from ML_PLATFORM_START_DATE; today's partition exists (end_offset=1)
#: because readings of the current day arrive during the day.
daily = dg.DailyPartitionsDefinition(start_date=_start_date, end_offset=1)

#: Training weeks (Monday to Sunday, UTC). The training set of week W uses only labels and features
#: known before the end of W, so re-running an old week rebuilds the same set.
weekly = dg.WeeklyPartitionsDefinition(start_date=_start_date, day_offset=1)
