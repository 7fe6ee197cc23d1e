"""The prediction API: failure probabilities from the Feast online store and the champion model.

``make serve`` runs it on 127.0.0.1:8000 (``uvicorn --factory ml_platform.serving.app:create_app``).
The model and the feature store are loaded once and kept in memory; a batch of sensors is one
online-store call. A background thread watches the ``champion`` alias and swaps the model in one
assignment: a request holds the model it started with, so in-flight requests finish on the old one.

Configuration (environment): the platform's own variables for MLflow and Feast, plus
``ML_PLATFORM_API_KEY`` (when set, ``/predict`` requires it in ``X-API-Key``),
``ML_PLATFORM_API_RELOAD_S`` (alias polling interval, default 10 s), ``ML_PLATFORM_API_MAX_BATCH``
(sensors per request, default 500).
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ml_platform.lib import feature_store as fs

MODEL_NAME = "failure_model"
ALIAS = "champion"
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH = int(os.environ.get("ML_PLATFORM_API_MAX_BATCH", "500"))
log = logging.getLogger("ml_platform.api")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def _configure_logging() -> None:
    if not any(isinstance(h.formatter, _JsonFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_JsonFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass(frozen=True)
class ServedModel:
    model: Any
    name: str
    version: str
    alias: str
    threshold: float
    trained_at: str
    run_id: str
    features: list[str]


class ModelHolder:
    """The model being served. ``current`` is read without a lock: swapping is one assignment."""

    def __init__(self, mlflow, name: str = MODEL_NAME, alias: str = ALIAS):
        self.mlflow, self.name, self.alias = mlflow, name, alias
        self.available_features: set[str] | None = None  # what the feature service serves
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.on_tick: Callable[[], Any] | None = None  # more work for the watcher thread
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one served. True on a swap."""
        # AliasUnresolved names the alias (and the version it dangles at): /ready shows it.
        version = self.mlflow.require_alias(self.name, self.alias)
        if self.current is not None and self.current.version == str(version.version):
            return False
        model = self.mlflow.mlflow().sklearn.load_model(f"models:/{self.name}/{version.version}")
        missing = set(model.feature_names_in_) - (self.available_features or set())
        if self.available_features is not None and missing:
            # Keep serving the current model rather than fail every request with it.
            raise ValueError(
                f"version {version.version} needs features the feature service lacks: "
                f"{sorted(missing)[:5]}"
            )
        self.current = ServedModel(
            model=model,
            name=self.name,
            version=str(version.version),
            alias=self.alias,
            threshold=float(version.tags.get("threshold", 0.5)),
            trained_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(),
            run_id=version.run_id or "",
            features=list(model.feature_names_in_),
        )
        log.info("model loaded", extra={"fields": {"model_version": self.current.version}})
        return True

    def watch(self, interval_s: float) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    if self.on_tick:
                        self.on_tick()
                    self.refresh()
                    self.last_error = None
                except Exception as exc:  # keep serving the loaded model; /ready reports it
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "model refresh failed", extra={"fields": {"error": self.last_error}}
                    )

        thread = threading.Thread(target=loop, name="model-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensor_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]],
        Field(min_length=1, max_length=MAX_BATCH, description="Sensors to score, 1 to the max."),
    ]
    as_of: datetime | None = Field(
        default=None,
        description="Score with the features known at this time (point in time, offline store) "
        "instead of the latest online values. Timezone-aware; naive means UTC.",
    )


class Prediction(BaseModel):
    sensor_id: str
    failure_probability: float
    predicted_failure: bool


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    request_id: str
    as_of: datetime | None
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    trained_at: str
    run_id: str
    threshold: float
    features: int
    # Set while the alias cannot be followed (the loaded version keeps being served).
    refresh_error: str | None = None


class Status(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None


class Envelope:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): a request id, the body size
    limit, the model version header on every response, and one JSON log line per request."""

    def __init__(self, app, holder: ModelHolder):
        self.app, self.holder = app, holder

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [0]
        served = self.holder.current

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if served is not None:
                    extra.append((b"x-model-version", served.version.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        too_large = JSONResponse(
            {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
        )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await too_large(scope, receive, send_with_headers)
        elif length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # Chunked: no length announced. Read up to the limit, then replay what was read.
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY_BYTES:
                    break
            if len(body) > MAX_BODY_BYTES:
                await too_large(scope, receive, send_with_headers)
            else:
                replayed = [{"type": "http.request", "body": body, "more_body": False}]

                async def replay():
                    return replayed.pop() if replayed else await receive()

                await self.app(scope, replay, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status[0],
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "model_version": served.version if served else None,
                }
            },
        )


def _online_matrix(
    store, service, features: list[str], sensors: list[str]
) -> tuple[np.ndarray, list[list[str]]]:
    """The sensors' latest online values as a float matrix in the model's feature order, and
    for each sensor the feature views the online store has no row for (judged by the event
    time: a stored row may hold missing values)."""
    got = store.get_online_features(
        features=service, entity_rows=[{"sensor_id": s} for s in sensors]
    ).to_dict(include_event_timestamps=True)
    matrix = np.array(
        [[np.nan if v is None else v for v in got[name]] for name in features], dtype="float64"
    ).T
    first = {p.name: p.features[0].name for p in service.feature_view_projections if p.features}
    absent = [
        [view for view, name in first.items() if not got[f"{name}__ts"][i]]
        for i in range(len(sensors))
    ]
    return matrix, absent


def _sqlite_path(store) -> Path | None:
    """The SQLite online store's file, None for another online store."""
    config = store.config.online_store
    if getattr(config, "type", "") != "sqlite":
        return None
    path = Path(config.path)
    return (
        path if path.is_absolute() or not store.config.repo_path else store.config.repo_path / path
    )


def _online_file_problem(store, seen: dict[str, int]) -> str | None:
    """A missing SQLite online store file, or None. Feast keeps its connection open: a file that
    was deleted (and perhaps written again) would still be read through the old one, so a new
    file (another inode) makes it reconnect. A few microseconds: run on every request."""
    path = _sqlite_path(store)
    if path is None:
        return None
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return f"the online store file {path.name} is missing: apply the registry (feature_views) and materialize online_features"
    if seen.setdefault("inode", inode) != inode:
        seen["inode"] = inode
        store._get_provider().online_store._conn = None  # the next read opens the new file
    return None


def _online_tables_problem(store) -> str | None:
    """Feature views whose online table is missing or empty, or None (also None for an online
    store that is neither SQLite nor PostgreSQL: only a failed read reveals a problem there)."""
    tables = {view: f"{store.project}_{view}" for view in fs.VIEWS}
    rows: dict[str, bool | None] = {}  # None: no table
    path, config = _sqlite_path(store), store.config.online_store
    if path is not None:
        import sqlite3
        from contextlib import closing

        if not path.exists():
            return f"the online store file {path.name} is missing"
        # Read-only: never create the file or a table while looking.
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            for view, table in tables.items():
                found = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                rows[view] = (
                    None
                    if not found
                    else bool(db.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone())
                )
    elif getattr(config, "type", "") == "postgres":
        from feast.infra.utils.postgres.connection_utils import _get_conn

        with _get_conn(config) as conn, conn.cursor() as cur:
            for view, table in tables.items():
                cur.execute("SELECT to_regclass(%s)", (f'"{table}"',))
                if cur.fetchone()[0] is None:
                    rows[view] = None
                else:
                    cur.execute(f'SELECT 1 FROM "{table}" LIMIT 1')
                    rows[view] = cur.fetchone() is not None
    missing = [v for v, r in rows.items() if r is None]
    empty = [v for v, r in rows.items() if r is False]
    if not missing and not empty:
        return None
    parts = [f"no table for {', '.join(missing)}"] * bool(missing)
    parts += [f"no rows in {', '.join(empty)}"] * bool(empty)
    return f"online store: {'; '.join(parts)}: materialize online_features"


def _as_of_matrix(store, features, sensors, as_of: datetime) -> np.ndarray:
    """The features known at ``as_of`` (point in time, offline store), in the model's order."""
    import pandas as pd

    at = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    asked = pd.DataFrame({"sensor_id": sensors, "event_timestamp": at})
    return fs.features_at(store, asked)[features].astype("float64").to_numpy()


def create_app(*, reload_interval_s: float | None = None) -> FastAPI:
    """The application; resources come from the platform's environment (``build_resources``)."""
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib.credentials import require_safe_environment

    # ML_PLATFORM_PROFILE=deployed: refuse to start with a default or weak credential.
    require_safe_environment(os.environ)
    _configure_logging()
    interval = reload_interval_s or float(os.environ.get("ML_PLATFORM_API_RELOAD_S", "10"))
    api_key = os.environ.get("ML_PLATFORM_API_KEY") or None
    resources = build_resources()
    holder = ModelHolder(resources["mlflow"])
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        from threadpoolctl import threadpool_limits

        # One row at a time: OpenMP threads in the trees only contend with the server's own.
        state["limits"] = threadpool_limits(limits=1)
        # Rows arrive as arrays in the model's own feature order (checked at load).
        warnings.filterwarnings("ignore", message="X does not have valid feature names")

        def feature_store():
            # Opened on the first tick that succeeds: in the deployed profile the API's database
            # role may only read, so it cannot create the SQL registry's tables of a fresh
            # deployment (the code location does); until then /ready says why. No model is
            # loaded before the store opens, so every request path after that finds it here.
            if "store" not in state:
                store = resources["feast"].store()
                # A registry cache that expires is refreshed inside whichever request comes next
                # (tens of ms on the event loop); here it never expires and the watcher
                # refreshes it instead.
                if hasattr(store.registry, "cached_registry_proto_ttl"):
                    store.registry.cached_registry_proto_ttl = timedelta(0)
                state["online_file"] = {}
                _online_file_problem(store, state["online_file"])  # the file Feast will open
                state["store"] = store
            return state["store"]

        def registry_tick() -> None:
            # A fresh deployment starts before the registry is applied: the service is looked
            # up again on every tick until it exists, and no model is loaded before it.
            store = feature_store()
            if hasattr(store.registry, "cached_registry_proto_ttl"):
                store.refresh_registry()
            # Looked up on every tick (a cached registry read): a registry change that adds
            # features lets a champion trained on them in without a restart.
            service = store.get_feature_service(fs.FEATURE_SERVICE)
            holder.available_features = set(fs.service_features(service))
            state["service"] = service

        holder.on_tick = registry_tick
        try:
            registry_tick()
            holder.refresh()
        except Exception as exc:  # start anyway: /ready says why, the watcher retries
            holder.last_error = f"{type(exc).__name__}: {exc}"
        holder.watch(interval)
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise pause every request for a few hundred ms now and then.
        gc.collect()
        gc.freeze()
        yield
        holder.stop()

    app = FastAPI(
        title="ml-platform prediction API",
        version="1",
        description="Failure probabilities per sensor from the champion model and Feast features.",
        lifespan=lifespan,
    )
    app.state.holder = holder

    app.add_middleware(Envelope, holder=holder)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace in a response; the log has the type and the request id.
        request_id = request.scope.get("state", {}).get("request_id", "")
        log.error(
            "unhandled error",
            extra={"fields": {"request_id": request_id, "error": type(exc).__name__}},
        )
        return JSONResponse({"detail": "internal error", "request_id": request_id}, 500)

    def authorised(x_api_key: Annotated[str | None, Header()] = None) -> None:
        given = (x_api_key or "").encode("latin-1", "replace")  # headers arrive as latin-1
        if api_key and not (x_api_key and hmac.compare_digest(given, api_key.encode())):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")

    @app.get("/health", response_model=Status)
    def health() -> Status:
        """The process is alive."""
        served = holder.current
        return Status(status="ok", model_version=served.version if served else None)

    def online_problem(deep: bool) -> str | None:
        """Why the online store cannot answer: its file, then (``deep``) a read and its tables."""
        store = state["store"]
        problem = _online_file_problem(store, state["online_file"])
        if problem or not deep:
            return problem
        read_error = None
        try:
            store.get_online_features(
                features=[f"{fs.DAILY_STATS_VIEW}:rows"], entity_rows=[{"sensor_id": "-"}]
            )
        except Exception as exc:
            read_error = f"online store: {type(exc).__name__}"
        return tables_problem() or read_error

    def tables_problem() -> str | None:
        try:
            return _online_tables_problem(state["store"])
        except Exception as exc:  # the inspection itself failed (database down, say)
            return f"online store: {type(exc).__name__}"

    @app.get("/ready", response_model=Status, responses={503: {"model": Status}})
    def ready():
        """A model is loaded and the online store answers with rows in every feature view.
        ``degraded`` (200): serving the loaded model while the alias cannot be followed."""
        served = holder.current
        if served is None:
            return JSONResponse(
                Status(status="not ready", detail=holder.last_error or "no model").model_dump(),
                status_code=503,
            )
        problem = online_problem(deep=True)
        if problem:
            return JSONResponse(
                Status(
                    status="not ready", model_version=served.version, detail=problem
                ).model_dump(),
                status_code=503,
            )
        if holder.last_error:
            return Status(status="degraded", model_version=served.version,
                          detail=holder.last_error)  # fmt: skip
        return Status(status="ready", model_version=served.version)

    @app.get("/model", response_model=ModelInfo, responses={503: {"model": Status}})
    def model_info():
        """The model being served."""
        served = holder.current
        if served is None:
            raise HTTPException(status_code=503, detail="no model loaded")
        return ModelInfo(
            name=served.name,
            version=served.version,
            alias=served.alias,
            trained_at=served.trained_at,
            run_id=served.run_id,
            threshold=served.threshold,
            features=len(served.features),
            refresh_error=holder.last_error,
        )

    @app.post(
        "/predict",
        response_model=PredictResponse,
        dependencies=[Depends(authorised)],
        responses={
            401: {"description": "API key required"},
            404: {"description": "Unknown sensors (no features)"},
            413: {"description": "Body too large"},
            503: {"description": "No model loaded, or the online store missing or empty"},
        },
    )
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Failure probability of each sensor, from its latest online features or, with
        ``as_of``, from the features known at that time."""
        served = holder.current  # held for the whole request: a swap cannot change it midway
        if served is None:
            raise HTTPException(
                status_code=503, detail=f"no model loaded: {holder.last_error or 'starting'}"
            )
        sensors = list(dict.fromkeys(body.sensor_ids))
        if body.as_of is None:  # one online-store read, ~1 ms: on the event loop
            problem = online_problem(deep=False)
            if problem is None:
                try:
                    x, absent = _online_matrix(
                        state["store"], state["service"], served.features, sensors
                    )
                except Exception as exc:  # a missing table, a database down: not the client's
                    log.warning("online store read failed", extra={"fields": {"error": repr(exc)}})
                    problem = await run_in_threadpool(online_problem, True)
                    problem = problem or f"online store read failed: {type(exc).__name__}"
            if problem is None:
                # A sensor the store has rows for in some views only would be scored on imputed
                # medians: a plausible, wrong answer. Refused, as is a store with no rows at all.
                partial = {s: a for s, a in zip(sensors, absent, strict=True)
                           if a and len(a) < len(state["service"].feature_view_projections)}  # fmt: skip
                if partial:
                    raise HTTPException(
                        status_code=503,
                        detail={"message": "incomplete online features: views missing for "
                                "these sensors; materialize online_features",
                                "missing_views": dict(list(partial.items())[:50])},
                    )  # fmt: skip
                if all(absent):  # unknown sensors, or a store with nothing to answer
                    empty = await run_in_threadpool(tables_problem)
                    if empty:
                        raise HTTPException(
                            status_code=503,
                            detail={"message": empty, "without_features": sensors[:50]},
                        )
            if problem:
                raise HTTPException(status_code=503, detail={"message": problem})
        else:  # a point-in-time query of the offline store: off the event loop
            x = await run_in_threadpool(
                _as_of_matrix, state["store"], served.features, sensors,
                body.as_of,
            )  # fmt: skip
        unknown = [s for s, row in zip(sensors, x, strict=True) if np.isnan(row).all()]
        if unknown:
            raise HTTPException(
                status_code=404,
                detail={"message": "no features for these sensors", "unknown": unknown[:50]},
            )
        proba = served.model.predict_proba(x)[:, 1]
        return PredictResponse(
            model_name=served.name,
            model_version=served.version,
            request_id=request.scope["state"]["request_id"],
            as_of=body.as_of,
            predictions=[
                Prediction(
                    sensor_id=s,
                    failure_probability=float(p),
                    predicted_failure=p >= served.threshold,
                )
                for s, p in zip(sensors, proba, strict=True)
            ],
        )

    return app
