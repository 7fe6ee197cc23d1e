"""Ingest layer: landed files become typed, day-split bronze parts (group ``ingest``)."""
