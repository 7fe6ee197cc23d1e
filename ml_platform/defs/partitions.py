"""Partitions shared across layers (ARCHITECTURE.md, "Partitions")."""

import dagster as dg

#: One partition per accepted landed object version: ``<key below landing/readings/>@<etag>``.
reading_files = dg.DynamicPartitionsDefinition(name="reading_files")
#: Same for ``landing/labels/``.
label_files = dg.DynamicPartitionsDefinition(name="label_files")
