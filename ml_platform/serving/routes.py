"""The endpoints: ``/health``, ``/ready``, ``/model`` and ``/predict``."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ml_platform.serving.auth import authorised
from ml_platform.serving.feature_source import FeatureSource
from ml_platform.serving.logs import log
from ml_platform.serving.model_holder import ModelHolder, ServedModel
from ml_platform.serving.schemas import (
    ModelInfo,
    Prediction,
    PredictRequest,
    PredictResponse,
    Status,
)

router = APIRouter()


# Async: a dependency that only reads app.state would otherwise cost a thread-pool hop.
async def model_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def feature_source(request: Request) -> FeatureSource:
    return request.app.state.features


Holder = Annotated[ModelHolder, Depends(model_holder)]
Features = Annotated[FeatureSource, Depends(feature_source)]


@router.get("/health", response_model=Status)
def health(holder: Holder) -> Status:
    """The process is alive."""
    served = holder.current
    return Status(status="ok", model_version=served.version if served else None)


@router.get("/ready", response_model=Status, responses={503: {"model": Status}})
def ready(holder: Holder, features: Features):
    """A model is loaded and the online store answers with rows in every feature view.
    ``degraded`` (200): serving the loaded model while the alias cannot be followed."""
    served = holder.current
    if served is None:
        return _not_ready(holder.last_error or "no model")
    problem = features.online_problem(deep=True)
    if problem:
        return _not_ready(problem, model_version=served.version)
    if holder.last_error:
        return Status(status="degraded", model_version=served.version, detail=holder.last_error)
    return Status(status="ready", model_version=served.version)


def _not_ready(detail: str, model_version: str | None = None) -> JSONResponse:
    status = Status(status="not ready", model_version=model_version, detail=detail)
    return JSONResponse(status.model_dump(), status_code=503)


@router.get("/model", response_model=ModelInfo, responses={503: {"model": Status}})
def model_info(holder: Holder):
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


@router.post(
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
async def predict(
    body: PredictRequest, request: Request, holder: Holder, features: Features
) -> PredictResponse:
    """Failure probability of each sensor, from its latest online features or, with
    ``as_of``, from the features known at that time."""
    served = holder.current  # held for the whole request: a swap cannot change it midway
    if served is None:
        raise HTTPException(
            status_code=503, detail=f"no model loaded: {holder.last_error or 'starting'}"
        )
    sensors = list(dict.fromkeys(body.sensor_ids))
    if body.as_of is None:  # one online-store read, ~1 ms: on the event loop
        x = await _latest_features(features, served, sensors)
    else:  # a point-in-time query of the offline store: off the event loop
        x = await run_in_threadpool(features.as_of_matrix, served.features, sensors, body.as_of)
    unknown = [s for s, row in zip(sensors, x, strict=True) if np.isnan(row).all()]
    if unknown:
        raise HTTPException(
            status_code=404,
            detail={"message": "no features for these sensors", "unknown": unknown[:50]},
        )
    return _scored(served, sensors, x, request.scope["state"]["request_id"], body)


async def _latest_features(
    features: FeatureSource, served: ServedModel, sensors: list[str]
) -> np.ndarray:
    """The sensors' online features, or a 503 that says what the online store lacks."""
    problem = features.online_problem(deep=False)
    if problem is None:
        try:
            x, absent = features.online_matrix(served.features, sensors)
        except Exception as exc:  # a missing table, a database down: not the client's
            log.warning("online store read failed", extra={"fields": {"error": repr(exc)}})
            problem = await run_in_threadpool(features.online_problem, True)
            problem = problem or f"online store read failed: {type(exc).__name__}"
        else:
            await _refuse_missing_views(features, sensors, absent)
            return x
    raise HTTPException(status_code=503, detail={"message": problem})


async def _refuse_missing_views(
    features: FeatureSource, sensors: list[str], absent: list[list[str]]
) -> None:
    """A 503 for sensors with rows in some feature views only, or for a store with none."""
    # A sensor the store has rows for in some views only would be scored on imputed medians:
    # a plausible, wrong answer.
    views = len(features.service.feature_view_projections)
    partial = {s: a for s, a in zip(sensors, absent, strict=True) if a and len(a) < views}
    if partial:
        raise HTTPException(
            status_code=503,
            detail={
                "message": "incomplete online features: views missing for "
                "these sensors; materialize online_features",
                "missing_views": dict(list(partial.items())[:50]),
            },
        )
    if all(absent):  # unknown sensors, or a store with nothing to answer
        empty = await run_in_threadpool(features.tables_problem)
        if empty:
            raise HTTPException(
                status_code=503, detail={"message": empty, "without_features": sensors[:50]}
            )


def _scored(
    served: ServedModel, sensors: list[str], x: np.ndarray, request_id: str, body: PredictRequest
) -> PredictResponse:
    """The model's answer for each sensor."""
    proba = served.model.predict_proba(x)[:, 1]
    return PredictResponse(
        model_name=served.name,
        model_version=served.version,
        request_id=request_id,
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
