"""Lakehouse layer: day-wise silver chunks and gold daily aggregates (group ``lakehouse``)."""
