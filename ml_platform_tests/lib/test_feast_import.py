"""Feast imported without typeguard's run-time checks (``import_feast_unchecked``), each case in a
fresh interpreter since Feast's classes are decorated once, at their first import."""

from __future__ import annotations

import subprocess
import sys

#: A Feast entity built with a name of the wrong type: typeguard's check rejects it at the call.
WRONG_TYPE = """
import typeguard
{prepare}
import feast
try:
    feast.Entity(name=123, join_keys=["sensor_id"])
except typeguard.TypeCheckError:
    print("checked")
except Exception:
    print("unchecked")
else:
    print("unchecked")
"""


def _outcome(prepare: str) -> str:
    code = WRONG_TYPE.format(prepare=prepare)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_feast_is_type_checked_at_every_call_unless_imported_unchecked():
    assert _outcome("") == "checked"  # what Feast does by default
    prepare = "from ml_platform.lib import feature_store as fs\nfs.import_feast_unchecked()"
    assert _outcome(prepare) == "unchecked"
