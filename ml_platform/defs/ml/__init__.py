"""ML layer: point-in-time training sets (group ``ml``)."""
