"""``python -m ml_platform.devstack.moto_s3 -H HOST -p PORT``: moto's S3 server, as
``moto_server`` starts it, with two per-request costs of moto 5 taken out.

- moto's dispatcher asks ``moto.backends.list_of_moto_modules()`` which backend a request's
  host names, and that function lists moto's package folder (``listdir`` and an ``isdir`` per
  entry) on every call, twice per request for a host like ``127.0.0.1``, under a lock that every
  request thread takes. The folder does not change while the server runs: it is listed once.
- Every timestamp of a response (each key of a listing) is parsed back from moto's stored ISO
  string with dateutil's general parser before it is formatted again. ISO strings are parsed
  with ``datetime.fromisoformat`` first; anything else still goes to botocore's parser.

Both leave what the server answers unchanged (``ml_platform_tests/lib/test_moto_s3.py``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import moto.backends
import moto.core.serialize
import moto.server

_parse_any = moto.core.serialize.parse_to_aware_datetime


def _cache_backend_listing() -> None:
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules


def parse_to_aware_datetime(value: Any) -> datetime:
    """botocore's ``parse_to_aware_datetime``, with a fast path for ISO 8601 strings."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _parse_any(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _parse_any(value)


def main(argv: list[str] | None = None) -> None:
    _cache_backend_listing()
    moto.core.serialize.parse_to_aware_datetime = parse_to_aware_datetime
    moto.server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
