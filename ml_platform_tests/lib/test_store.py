"""S3Store's create-only write when another conditional write to the key is in flight (S3's 409
ConditionalRequestConflict), which neither moto nor a single writer produces: a client that
answers with the codes S3 documents."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from ml_platform.lib import store as store_module
from ml_platform.lib.store import S3Store, StoreUnavailableError


class _ConflictingClient:
    """``put_object`` answers each call with the next code in ``answers`` (None: written)."""

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.calls = 0

    def put_object(self, **kwargs) -> dict:
        assert kwargs["IfNoneMatch"] == "*"
        code = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if code is None:
            return {}
        raise ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(store_module.time, "sleep", lambda s: None)


@pytest.mark.parametrize(
    ("answers", "created", "calls"),
    [
        (["ConditionalRequestConflict", "409", None], True, 3),  # the other write failed
        (["ConditionalRequestConflict", "PreconditionFailed"], False, 2),  # the other won
    ],
    ids=["then-written", "then-exists"],
)
def test_a_write_in_flight_is_waited_for_then_decides(answers, created, calls):
    client = _ConflictingClient(answers)
    assert S3Store("bucket", "", client).create_bytes(b"entry", "ledger/x.json") is created
    assert client.calls == calls


def test_conflicts_that_never_end_are_a_store_error_not_a_hang():
    client = _ConflictingClient(["ConditionalRequestConflict"])
    with pytest.raises(StoreUnavailableError, match="keep conflicting"):
        S3Store("bucket", "", client).create_bytes(b"entry", "ledger/x.json")
    assert client.calls > 1  # it asked again before giving up


def test_another_client_error_is_not_retried():
    client = _ConflictingClient(["AccessDenied"])
    with pytest.raises(StoreUnavailableError, match="AccessDenied"):
        S3Store("bucket", "", client).create_bytes(b"entry", "ledger/x.json")
    assert client.calls == 1
