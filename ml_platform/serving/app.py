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

import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
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
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one served. True on a swap."""
        client = self.mlflow.client()
        version = client.get_model_version_by_alias(self.name, self.alias)
        if self.current is not None and self.current.version == str(version.version):
            return False
        model = self.mlflow.mlflow().sklearn.load_model(f"models:/{self.name}/{version.version}")
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


class Status(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None


def create_app(*, reload_interval_s: float | None = None) -> FastAPI:
    """The application; resources come from the platform's environment (``build_resources``)."""
    from ml_platform.defs.resources import build_resources

    _configure_logging()
    interval = reload_interval_s or float(os.environ.get("ML_PLATFORM_API_RELOAD_S", "10"))
    api_key = os.environ.get("ML_PLATFORM_API_KEY") or None
    resources = build_resources()
    holder = ModelHolder(resources["mlflow"])
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state["store"] = resources["feast"].store()
        state["service"] = state["store"].get_feature_service(fs.FEATURE_SERVICE)
        try:
            holder.refresh()
        except Exception as exc:  # start anyway: /ready says why, the watcher retries
            holder.last_error = f"{type(exc).__name__}: {exc}"
        holder.watch(interval)
        yield
        holder.stop()

    app = FastAPI(
        title="ml-platform prediction API",
        version="1",
        description="Failure probabilities per sensor from the champion model and Feast features.",
        lifespan=lifespan,
    )
    app.state.holder = holder

    @app.middleware("http")
    async def envelope(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = JSONResponse(
                {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # never a stack trace in a response; the log has the type
                log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
                response = JSONResponse(
                    {"detail": "internal error", "request_id": request_id}, status_code=500
                )
        served = holder.current
        response.headers["x-request-id"] = request_id
        if served is not None:
            response.headers["x-model-version"] = served.version
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "model_version": served.version if served else None,
                }
            },
        )
        return response

    def authorised(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key and not (x_api_key and hmac.compare_digest(x_api_key, api_key)):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")

    @app.get("/health", response_model=Status)
    def health() -> Status:
        """The process is alive."""
        served = holder.current
        return Status(status="ok", model_version=served.version if served else None)

    @app.get("/ready", response_model=Status, responses={503: {"model": Status}})
    def ready():
        """A model is loaded and the online store answers."""
        served = holder.current
        if served is None:
            return JSONResponse(
                Status(status="not ready", detail=holder.last_error or "no model").model_dump(),
                status_code=503,
            )
        try:
            state["store"].get_online_features(
                features=[f"{fs.DAILY_STATS_VIEW}:rows"], entity_rows=[{"sensor_id": "-"}]
            )
        except Exception as exc:
            return JSONResponse(
                Status(
                    status="not ready",
                    model_version=served.version,
                    detail=f"online store: {type(exc).__name__}",
                ).model_dump(),
                status_code=503,
            )
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
        )

    @app.post(
        "/predict",
        response_model=PredictResponse,
        dependencies=[Depends(authorised)],
        responses={
            401: {"description": "API key required"},
            404: {"description": "Unknown sensors (no features)"},
            413: {"description": "Body too large"},
            503: {"description": "No model loaded"},
        },
    )
    def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Failure probability of each sensor, from its latest online features or, with
        ``as_of``, from the features known at that time."""
        import pandas as pd

        served = holder.current  # held for the whole request: a swap cannot change it midway
        if served is None:
            raise HTTPException(status_code=503, detail="no model loaded yet")
        sensors = list(dict.fromkeys(body.sensor_ids))
        store, service = state["store"], state["service"]
        if body.as_of is None:
            frame = store.get_online_features(
                features=service, entity_rows=[{"sensor_id": s} for s in sensors]
            ).to_df()
        else:
            at = body.as_of if body.as_of.tzinfo else body.as_of.replace(tzinfo=UTC)
            asked = pd.DataFrame(
                {
                    "sensor_id": sensors,
                    "event_timestamp": pd.Timestamp(at).tz_convert("UTC").as_unit("us"),
                }
            )
            frame = store.get_historical_features(entity_df=asked, features=service).to_df()
            frame = asked[["sensor_id"]].merge(frame, on="sensor_id", how="left")
        frame = frame.set_index("sensor_id").reindex(sensors)
        x = frame.reindex(columns=served.features).astype("float64")
        unknown = x.index[x.isna().all(axis=1)].tolist()
        if unknown:
            raise HTTPException(
                status_code=404,
                detail={"message": "no features for these sensors", "unknown": unknown[:50]},
            )
        proba = served.model.predict_proba(x.reset_index(drop=True))[:, 1]
        return PredictResponse(
            model_name=served.name,
            model_version=served.version,
            request_id=request.state.request_id,
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
