"""Helpers shared by test modules."""

import http.server
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

import dagster as dg
import pytest

from ml_platform.defs.ingest.assets import raw_labels, raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore


def tool_missing(reason: str) -> NoReturn:
    """A test needs a tool this machine lacks: skipped on a developer's machine, failed when
    ``CI`` is set (CI installs every tool, so a skip there would hide a broken setup)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so a missing tool fails the run", pytrace=False)
    pytest.skip(reason)


#: Header row of a readings file in the bundled contract's column order.
READINGS_HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current\n"


def memory_instance() -> dg.DagsterInstance:
    """Dagster's in-memory instance, for runs executed in this process: the SQLite storage of
    ``dg.instance_for_test()`` opens a connection and commits for every event (docs/testing.md).
    Runs of another process (the daemon's, the CLI's) need a storage they can reach."""
    return dg.DagsterInstance.ephemeral()


def table_rows(value: dg.TableMetadataValue) -> list[dict]:
    """The rows of a Dagster table (``MetadataValue.table``) as dicts."""
    return [r.data for r in value.records]


def rows_by(value: dg.TableMetadataValue, column: str) -> dict[Any, dict]:
    """A Dagster table's rows by their ``column`` (a per-day table by its day)."""
    return {row[column]: row for row in table_rows(value)}


def table_column(value: dg.TableMetadataValue, key: str, column: str) -> dict[Any, Any]:
    """One column of a Dagster table by the rows' ``key`` (``rows_by_date``: date -> rows)."""
    return {row[key]: row[column] for row in table_rows(value)}


def stored_key(store, metadata: Mapping[str, Any]) -> str:
    """The key of the object a materialization's ``dagster/uri`` names, asserted to read back
    from ``store`` (``metadata``: its MetadataValues or their values)."""
    assert "dagster/uri" in metadata, sorted(metadata)
    uri = getattr(metadata["dagster/uri"], "value", metadata["dagster/uri"])
    base = store.uri("").rstrip("/") + "/"
    assert uri.startswith(base), (uri, base)
    key = unquote(uri[len(base) :]) if uri.startswith("file:") else uri[len(base) :]
    assert store.uri(key) == uri, (uri, key)
    assert store.read_bytes(key), f"{uri}: an empty object"
    return key


def ingest_versions(
    instance, dataset: str, versions: list[str], *, reingest: bool = False
) -> dg.ExecuteInProcessResult:
    """One ingest run (a batch) of ``versions`` already landed under landing/<dataset>/, in
    today's landing-day partition (any store: the environment's resources are used)."""
    asset = raw_readings if dataset == "readings" else raw_labels
    return dg.materialize(
        [asset],
        instance=instance,
        partition_key=paths.landing_day(datetime.now(UTC)),
        run_config={"ops": {asset.key.path[-1]: {"config": {"versions": versions,
                                                            "reingest": reingest}}}},
        resources=build_resources(),
        raise_on_error=False,
    )  # fmt: skip


def outcomes(result: dg.ExecuteInProcessResult, asset: str = "raw_readings") -> dict[str, str]:
    """Version id -> outcome, from the run's per-file metadata."""
    [event] = result.asset_materializations_for_node(asset)
    table = event.metadata["file_outcomes"].value
    return {r.data["version"]: r.data["outcome"] for r in table.records}


def ingest_landed(instance, name: str, etag: str) -> tuple[str, dg.ExecuteInProcessResult]:
    """Ingest the readings version already landed at landing/readings/<name>."""
    version = paths.partition_key(name, etag)
    return version, ingest_versions(instance, "readings", [version])


def ingest(instance, store: LocalStore, file: Path, name: str | None = None) -> str:
    """Land ``file`` and ingest it; its version id if it was ingested, "" if quarantined."""
    name = name or file.name
    key = paths.landing_object("readings", name)
    store.put_file(file, key)
    version, result = ingest_landed(instance, name, store.etag(key))
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return version if outcomes(result)[version] in ("ingested", "already_ingested") else ""


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A local Slack-compatible incoming webhook: its URL and the JSON bodies posted to it."""
    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()
