"""The API's logger, ``ml_platform.api``: one JSON object a line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

log = logging.getLogger("ml_platform.api")


class JsonFormatter(logging.Formatter):
    """The time, level and message, plus the record's ``fields`` (``extra={"fields": ...}``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def configure_logging() -> None:
    """Send the API's log to stderr as JSON, once however many apps are created."""
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
