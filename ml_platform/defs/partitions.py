"""Partitions shared across layers (ARCHITECTURE.md, "Partitions")."""

import dagster as dg

from ml_platform.defs.resources import settings

#: One partition per accepted landed object version: ``<key below landing/readings/>@<etag>``.
reading_files = dg.DynamicPartitionsDefinition(name="reading_files")
#: Same for ``landing/labels/``.
label_files = dg.DynamicPartitionsDefinition(name="label_files")
#: Same for scoring requests dropped into ``landing/scoring/``.
scoring_files = dg.DynamicPartitionsDefinition(name="scoring_files")

#: One partition per UTC day, from ML_PLATFORM_START_DATE; today's partition exists (end_offset=1)
#: because readings of the current day arrive during the day.
daily = dg.DailyPartitionsDefinition(start_date=settings().start_date, end_offset=1)

#: Training weeks (Monday to Sunday, UTC). The training set of week W uses only labels and features
#: known before the end of W, so re-running an old week rebuilds the same set.
weekly = dg.WeeklyPartitionsDefinition(start_date=settings().start_date, day_offset=1)
