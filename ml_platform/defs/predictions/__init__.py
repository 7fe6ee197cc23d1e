"""Predictions layer: daily prediction files and on-demand scoring (group ``predictions``)."""
