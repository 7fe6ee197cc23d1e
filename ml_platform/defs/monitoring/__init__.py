"""Monitoring layer: feature drift and the drift gate (group ``monitoring``)."""
