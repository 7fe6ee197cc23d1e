"""Feature store layer: Feast feature views and the online store, day by day (group ``features``)."""
