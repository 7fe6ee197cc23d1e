"""Online serving: the prediction API (``make serve``)."""
